/* dqtest.h - shared declarations for the dqtest kernel. */
#ifndef DQTEST_H
#define DQTEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "x86.h"

#define MAX_CPUS 64
#define MAX_SAMPLES 8192
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Interrupt vectors used by dqtest. */
#define VEC_KICK 0x20     /* wakes an idle AP (mailbox) or the waiting BSP (done) */
#define VEC_TIMER 0x21    /* LAPIC timer: bounds the BSP's HLT while it waits */
#define VEC_TEST 0x30     /* IPI conformance cases */
#define VEC_ALIAS 0x31    /* IPIs to an aliased xAPIC id: the handler restores the id */
#define VEC_PING 0x40     /* IPI ping-pong: request */
#define VEC_PONG 0x41     /* IPI ping-pong: reply */
#define VEC_PIT 0x50      /* PIT via IOAPIC */
#define VEC_MSI 0x51      /* PCI MSI */
#define VEC_ISA 0x53      /* ISA IRQ of pc-testdev */
#define VEC_SPURIOUS 0xff

/* ---- lib.c ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
bool parse_u64(const char *s, size_t len, uint64_t *out);
void sort_u64(uint64_t *v, size_t n);

/* ---- serial.c ---- */
void serial_init(void);
int serial_getc(void);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- cmdline.c ---- */
struct options {
    uint64_t iters;          /* samples per latency measurement */
    uint64_t litmus_iters;   /* iterations per store-buffering run */
    uint64_t xmc_rounds;     /* rounds per cross-modifying-code pair */
    uint64_t atomic_iters;   /* increments per CPU in the atomic counter test */
    uint64_t tsc_bound_ns;   /* allowed backward TSC step between CPUs */
    uint64_t delay_ms;       /* wait this long after CPU bring-up, before the groups */
    uint64_t timeout_ms;     /* how long to wait for anything before failing */
    uint64_t settle_us;      /* quiet time before counting deliveries */
    uint64_t max_cpus;       /* bring up at most this many CPUs (0: all) */
    bool idle_poll;          /* idle APs spin instead of HLT */
    bool pause;              /* spin loops execute PAUSE (costly under TCG: it leaves the TB) */
    bool verbose;
    bool wait_input;         /* wait for a byte on the serial console before the groups */
    char only[128];          /* comma-separated groups, empty = all */
    char skip[128];
};
extern struct options opt;

/* Body of every spin-wait loop.  PAUSE is the hardware hint, but under TCG it
 * exits to the vCPU loop (and takes QEMU's big lock) on every iteration, which
 * starves other vCPUs; by default a compiler barrier is used instead. */
static inline void cpu_relax(void)
{
    if (opt.pause)
        pause_insn();
    else
        barrier();
}

/* ---- spinlock ---- */
typedef struct { volatile uint32_t locked; } spinlock_t;
static inline void spin_lock(spinlock_t *l)
{
    while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
        while (READ_ONCE(l->locked))
            cpu_relax();
}
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }


void cmdline_parse(const char *cmdline);
void cmdline_check_groups(void);
bool group_enabled(const char *group);
bool group_named(const char *group);   /* only= names it */

/* ---- report.c ---- */
void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void check_todo(bool ok, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
unsigned report_todo_failures(void);
void skip(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void report_lat(const char *name, const char *label, uint64_t *samples, size_t n);
unsigned report_failures(void);
unsigned report_total(void);
uint64_t cycles_to_ns(uint64_t cycles);
extern uint64_t samples[MAX_SAMPLES];   /* shared buffer for one measurement at a time */
void report_counts(const char *what, const uint32_t *got, const uint32_t *expect);

/* ---- tsc.c ---- */
extern uint64_t tsc_khz;
void tsc_calibrate(void);
void tsc_crosscheck_hpet(void);
uint64_t ns_to_cycles(uint64_t ns);
void udelay(uint64_t us);
void mdelay(uint64_t ms);
uint64_t deadline_ms(uint64_t ms);   /* absolute TSC value ms from now */
static inline bool expired(uint64_t deadline) { return rdtsc() > deadline; }

/* ---- acpi.c ---- */
struct ioapic_info { uint32_t id, addr, gsi_base; };
struct iso_info { uint8_t bus, source; uint32_t gsi; uint16_t flags; };
struct platform {
    bool madt_found;
    uint64_t lapic_addr;
    unsigned ncpus_madt;
    uint8_t apic_ids[MAX_CPUS];
    unsigned nioapic;
    struct ioapic_info ioapic[4];
    unsigned niso;
    struct iso_info iso[16];
    uint64_t hpet_addr;          /* 0 if no HPET table */
    uint32_t pm1a_cnt;           /* FADT PM1a control block port, 0 if unknown */
    uint16_t slp_typ_s5;         /* SLP_TYPa for S5 from the DSDT */
    bool pm_found;
};
extern struct platform plat;
void acpi_init(void);
uint32_t irq_to_gsi(uint8_t irq, uint16_t *flags);

/* ---- apic.c ---- */
#define LAPIC_BASE_DEFAULT 0xfee00000ull
#define ICR_FIXED (0u << 8)
#define ICR_LOWPRI (1u << 8)
#define ICR_NMI (4u << 8)
#define ICR_INIT (5u << 8)
#define ICR_SIPI (6u << 8)
#define ICR_LOGICAL (1u << 11)
#define ICR_ASSERT (1u << 14)
#define ICR_LEVEL (1u << 15)
#define ICR_SELF (1u << 18)
#define ICR_ALL (2u << 18)
#define ICR_OTHERS (3u << 18)
void lapic_init_cpu(unsigned index);
void lapic_timer_calibrate(void);
void lapic_timer_oneshot_us(uint64_t us);
uint32_t lapic_id(void);
void lapic_set_id(uint32_t apic_id);     /* xAPIC ID register (bits 31:24) */
void lapic_set_ldr(uint32_t bits);       /* flat-model logical id (bits 31:24) */
void lapic_eoi(void);
void lapic_send_ipi(uint32_t dest_field, uint32_t icr_lo);
uint32_t lapic_read(uint32_t reg);
void pic_disable(void);
uint32_t ioapic_read(unsigned idx, uint32_t reg);
void ioapic_write(unsigned idx, uint32_t reg, uint32_t v);
void ioapic_mask_all(void);
void ioapic_route(uint32_t gsi, uint8_t vector, uint8_t dest_apic, uint16_t mps_flags, bool masked);
bool ioapic_for_gsi(uint32_t gsi, unsigned *idx, unsigned *pin);

/* ---- idt.c ---- */
struct frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;
};
void idt_init(void);
void idt_load(void);
typedef void (*irq_handler_t)(struct frame *f);
void irq_set_handler(uint8_t vector, irq_handler_t h);

/* ---- smp.c ---- */
struct cpu {
    struct cpu *self;                /* %gs:0 */
    uint32_t index;
    uint32_t apic_id;
    volatile uint32_t online;
    volatile uint32_t dead;          /* stopped answering its mailbox */
    uint64_t stack_top;
    /* mailbox: BSP posts fn/arg and bumps cmd_seq; the CPU runs it and sets done_seq */
    void (*volatile cmd_fn)(void *);
    void *volatile cmd_arg;
    volatile uint64_t cmd_seq;
    volatile uint64_t done_seq;
    volatile uint64_t beat;          /* bumped once per round of a long command: progress */
    /* per-vector interrupt counts, written only by this CPU's handlers */
    volatile uint32_t vec_count[256];
    volatile uint32_t nmi_count;
    volatile uint32_t pong_apic;     /* where VEC_PING replies go */
    volatile uint64_t pong_count;
    volatile uint64_t last_irq_tsc;
} __attribute__((aligned(64)));

extern struct cpu cpus[MAX_CPUS];
extern unsigned ncpus;
static inline struct cpu *this_cpu(void)
{
    struct cpu *c;
    __asm__ volatile("movq %%gs:0, %0" : "=r"(c));
    return c;
}

/* A command that runs many rounds calls this once per round, so that the BSP
 * can tell a CPU that is slow (its vCPU thread starved of host CPU) from one
 * that has stopped. */
static inline void smp_beat(void)
{
    this_cpu()->beat++;
}
void handoff_relax(uint64_t t0);
void smp_init_bsp(void);
void smp_boot_aps(void);
bool smp_call_async(unsigned cpu, void (*fn)(void *), void *arg);
bool smp_wait(unsigned cpu);
bool smp_call(unsigned cpu, void (*fn)(void *), void *arg);
bool run_pair(unsigned a, void (*fa)(void *), unsigned b, void (*fb)(void *), void *arg);
bool run_all(void (*fn)(void *), void *arg);
void smp_flush(void);
int cpu_by_apic(uint32_t apic_id);

/* ---- tests ---- */
void test_ipi(void);
void test_pingpong(void);
void test_pio(void);
void test_mmio(void);
void test_irq(void);
void test_msi(void);
void test_dma(void);
void test_intx(void);
void test_isairq(void);
void test_apic_state(void);
void test_vga(void);
void test_pcicfg(void);
void test_disk(void);
void test_mem(void);
void test_litmus(void);
void test_xmc(void);
void test_tsc(void);

/* ---- pci.c ---- */
uint32_t pci_read32(unsigned bus, unsigned dev, unsigned fn, unsigned reg);
void pci_write32(unsigned bus, unsigned dev, unsigned fn, unsigned reg, uint32_t v);
uint16_t pci_read16(unsigned bus, unsigned dev, unsigned fn, unsigned reg);
void pci_write16(unsigned bus, unsigned dev, unsigned fn, unsigned reg, uint16_t v);
unsigned pci_find_cap(unsigned bus, unsigned dev, unsigned fn, uint8_t cap_id);

/* ---- power.c ---- */
#define DEBUG_EXIT_PORT 0xf4
#define DEBUG_EXIT_PASS 0x10   /* QEMU exits with (0x10 << 1) | 1 = 33 */
#define DEBUG_EXIT_FAIL 0x11   /* QEMU exits with (0x11 << 1) | 1 = 35 */
void __attribute__((noreturn)) power_off(bool pass);
void __attribute__((noreturn)) panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- main.c ---- */
extern uint32_t mb_magic, mb_info;

#endif
