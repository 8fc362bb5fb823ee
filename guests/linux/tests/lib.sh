# Helpers for the guest's test scripts (sourced, not run: not executable).

# dq_arg NAME DEFAULT: the value of dq.NAME=... on the kernel command line.
dq_arg() {
  for a in $(cat /proc/cmdline); do
    case "$a" in "dq.$1="*) echo "${a#dq.$1=}"; return ;; esac
  done
  echo "$2"
}

# dq_irq_sum LABEL: total count of the /proc/interrupts row whose name column is LABEL.
dq_irq_sum() {
  awk -v l="$1:" '$1 == l { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }' \
    /proc/interrupts
}

# dq_ncpus: CPUs online.
dq_ncpus() { grep -c '^processor' /proc/cpuinfo; }
