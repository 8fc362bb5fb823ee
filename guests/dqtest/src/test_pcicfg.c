/*
 * test_pcicfg.c - PCI config cycles (mechanism #1, 0xcf8/0xcfc) from every CPU.
 *
 * A shard that does not own the host bridge makes its CPUs' config cycles itself
 * (docs/shard-design.md §15, "Config cycles on the vCPU's own shard"): its own
 * address register, absent functions answered at once, reads of the bridge shard's
 * functions asked of that shard, writes and a third shard's functions made by the
 * bridge's shard.  Every CPU reads the address register back, the host bridge's ID
 * and an absent function; then, for every ordered pair of CPUs, A writes a
 * function's cache line size register (a read/write byte of every PCI function)
 * and B reads it back: one config space, whichever CPU makes the cycle.  The
 * pairs run on the host bridge (the I/O shard's function) and, when there is a
 * VGA, on it too (the last shard's in the sharded layouts of the tests).
 */
#include "dqtest.h"

#define PCI_CACHE_LINE 0x0c
#define PCI_CLASS_VGA 0x030000u
#define ABSENT_BUS 0xa5          /* no bridge leads there */

struct fn { unsigned bus, dev, fn; };

struct cfg_args {
    struct fn f;
    uint32_t value, read, addr_back;
};

static void read_ids(void *p)
{
    struct cfg_args *a = p;
    uint32_t addr = 0x80000000u | (a->f.bus << 16) | (a->f.dev << 11) | (a->f.fn << 8);
    outl(0xcf8, addr);
    a->addr_back = inl(0xcf8);
    a->read = inl(0xcfc);
    a->value = addr;
}

static void write_line(void *p)
{
    struct cfg_args *a = p;
    uint32_t r = pci_read32(a->f.bus, a->f.dev, a->f.fn, PCI_CACHE_LINE);
    pci_write32(a->f.bus, a->f.dev, a->f.fn, PCI_CACHE_LINE, (r & ~0xffu) | a->value);
}

static void read_line(void *p)
{
    struct cfg_args *a = p;
    a->read = pci_read32(a->f.bus, a->f.dev, a->f.fn, PCI_CACHE_LINE) & 0xff;
}

static bool find_vga(struct fn *out)
{
    for (unsigned d = 0; d < 32; d++)
        for (unsigned f = 0; f < 8; f++) {
            if ((pci_read32(0, d, f, 0) & 0xffff) == 0xffff)
                continue;
            if (pci_read32(0, d, f, 8) >> 8 == PCI_CLASS_VGA) {
                *out = (struct fn){0, d, f};
                return true;
            }
        }
    return false;
}

static void pairs(const char *name, struct fn f)
{
    uint32_t saved = pci_read32(f.bus, f.dev, f.fn, PCI_CACHE_LINE);
    uint8_t value = 0x10;
    for (unsigned a = 0; a < ncpus; a++)
        for (unsigned b = 0; b < ncpus; b++) {
            struct cfg_args args = {f, value, 0, 0};
            bool ran = smp_call(a, write_line, &args) && smp_call(b, read_line, &args);
            check(ran && args.read == value,
                  "pcicfg %s cache line size 0x%02x written by cpu%u, read by cpu%u: 0x%02x",
                  name, value, a, b, args.read);
            value = (uint8_t)(value + 0x04);
        }
    pci_write32(f.bus, f.dev, f.fn, PCI_CACHE_LINE, saved);
}

void test_pcicfg(void)
{
    struct fn host = {0, 0, 0}, absent = {ABSENT_BUS, 3, 0}, vga;
    uint32_t host_id = pci_read32(0, 0, 0, 0);
    for (unsigned c = 0; c < ncpus; c++) {
        struct cfg_args h = {host, 0, 0, 0}, x = {absent, 0, 0, 0};
        bool ran = smp_call(c, read_ids, &h) && smp_call(c, read_ids, &x);
        check(ran && h.addr_back == h.value && x.addr_back == x.value,
              "pcicfg address register read back by cpu%u: 0x%08x, 0x%08x", c, h.addr_back,
              x.addr_back);
        check(ran && h.read == host_id && (host_id & 0xffff) != 0xffff,
              "pcicfg host bridge id read by cpu%u: 0x%08x (cpu0: 0x%08x)", c, h.read, host_id);
        check(ran && x.read == 0xffffffffu, "pcicfg absent function read by cpu%u: 0x%08x", c,
              x.read);
    }
    pairs("host bridge", host);
    if (find_vga(&vga))
        pairs("vga", vga);
    else
        skip("pcicfg vga", "no VGA device");
}
