/*
 * cmdline.c - options from the multiboot command line.
 *
 * QEMU passes "<kernel path> <-append string>"; tokens without '=' are ignored.
 * Recognised: only=G1,G2  skip=G1,G2  iters=N  litmus_iters=N  xmc_rounds=N
 * atomic_iters=N  tsc_bound_ns=N  timeout_ms=N  settle_us=N  cpus=N  delay_ms=N
 * idle=hlt|poll  pause=0|1  verbose=0|1  wait_input=0|1.  Groups: ipi pingpong pio mmio irq msi intx
 * mem litmus xmc tsc, and dma only when only= names it (CPU bring-up always runs).
 */
#include "dqtest.h"

struct options opt = {
    .iters = 200,
    .litmus_iters = 1000,
    .xmc_rounds = 20,
    .atomic_iters = 20000,
    .tsc_bound_ns = 50000,
    .timeout_ms = 2000,
    .settle_us = 2000,
    .max_cpus = 0,
};

static const char *const groups[] = {
    "ipi", "apic", "pingpong", "pio", "mmio", "irq", "msi", "intx", "isairq", "vga", "pcicfg", "disk", "mem", "litmus", "xmc", "tsc", "dma",
};

static bool key_is(const char *tok, size_t klen, const char *key)
{
    return klen == strlen(key) && strncmp(tok, key, klen) == 0;
}

static void copy_str(char *dst, size_t size, const char *src, size_t len)
{
    if (len >= size)
        len = size - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

static void parse_token(const char *tok, size_t len)
{
    const char *eq = NULL;
    for (size_t i = 0; i < len; i++)
        if (tok[i] == '=') {
            eq = tok + i;
            break;
        }
    if (!eq)
        return;
    size_t klen = (size_t)(eq - tok);
    const char *val = eq + 1;
    size_t vlen = len - klen - 1;
    struct { const char *key; uint64_t *dst; } nums[] = {
        {"iters", &opt.iters},
        {"litmus_iters", &opt.litmus_iters},
        {"xmc_rounds", &opt.xmc_rounds},
        {"atomic_iters", &opt.atomic_iters},
        {"tsc_bound_ns", &opt.tsc_bound_ns},
        {"timeout_ms", &opt.timeout_ms},
        {"settle_us", &opt.settle_us},
        {"cpus", &opt.max_cpus},
        {"delay_ms", &opt.delay_ms},
    };
    for (size_t i = 0; i < ARRAY_SIZE(nums); i++) {
        if (key_is(tok, klen, nums[i].key)) {
            if (!parse_u64(val, vlen, nums[i].dst))
                kprintf("# warning: bad value for option %s\n", nums[i].key);
            return;
        }
    }
    if (key_is(tok, klen, "only")) {
        copy_str(opt.only, sizeof(opt.only), val, vlen);
    } else if (key_is(tok, klen, "skip")) {
        copy_str(opt.skip, sizeof(opt.skip), val, vlen);
    } else if (key_is(tok, klen, "idle")) {
        opt.idle_poll = vlen == 4 && strncmp(val, "poll", 4) == 0;
    } else if (key_is(tok, klen, "pause")) {
        opt.pause = !(vlen == 1 && val[0] == '0');
    } else if (key_is(tok, klen, "wait_input")) {
        opt.wait_input = !(vlen == 1 && val[0] == '0');
    } else if (key_is(tok, klen, "verbose")) {
        opt.verbose = !(vlen == 1 && val[0] == '0');
    } else if (key_is(tok, klen, "console") || key_is(tok, klen, "panic")) {
        /* added by the dQEMU launcher for Linux guests: not ours */
    } else {
        char k[32];
        copy_str(k, sizeof(k), tok, klen);
        kprintf("# warning: unknown option %s\n", k);
    }
}

void cmdline_parse(const char *cmdline)
{
    if (!cmdline)
        return;
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *start = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        if (p > start)
            parse_token(start, (size_t)(p - start));
    }
    if (opt.iters == 0)
        opt.iters = 1;
    if (opt.iters > MAX_SAMPLES)
        opt.iters = MAX_SAMPLES;
    if (opt.timeout_ms == 0)
        opt.timeout_ms = 1;
}

/* Is group listed in the comma-separated list? */
static bool in_list(const char *list, const char *group)
{
    size_t glen = strlen(group);
    const char *p = list;
    while (*p) {
        const char *start = p;
        while (*p && *p != ',')
            p++;
        if ((size_t)(p - start) == glen && strncmp(start, group, glen) == 0)
            return true;
        if (*p == ',')
            p++;
    }
    return false;
}

bool group_enabled(const char *group)
{
    if (opt.only[0] && !in_list(opt.only, group))
        return false;
    return !in_list(opt.skip, group);
}

bool group_named(const char *group)
{
    return in_list(opt.only, group);
}

/* Warn about group names that match nothing (typos would silently run nothing). */
void cmdline_check_groups(void)
{
    const char *lists[] = {opt.only, opt.skip};
    for (size_t l = 0; l < 2; l++) {
        const char *p = lists[l];
        while (*p) {
            const char *start = p;
            while (*p && *p != ',')
                p++;
            bool known = false;
            for (size_t g = 0; g < ARRAY_SIZE(groups); g++)
                if ((size_t)(p - start) == strlen(groups[g]) &&
                    strncmp(start, groups[g], (size_t)(p - start)) == 0)
                    known = true;
            if (!known && p > start) {
                char name[32];
                copy_str(name, sizeof(name), start, (size_t)(p - start));
                kprintf("# warning: unknown test group %s\n", name);
            }
            if (*p == ',')
                p++;
        }
    }
}
