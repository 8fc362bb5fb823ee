/*
 * test_disk.c - an IDE disk on the q35 AHCI controller, seen from every CPU.
 *
 * With -device ide-hd,bus=ide.0 on q35 the disk sits on port 0 of the ICH9 AHCI
 * function (00:1f.2, class 01:06:01).  The firmware has reset the port, so its
 * status (PxSSTS) must say "device present, link up" and its signature (PxSIG)
 * must be an ATA disk's, read through the controller's MMIO (ABAR, BAR5) by every
 * CPU.  Without such a controller and disk the group is skipped.
 */
#include "dqtest.h"

#define AHCI_CLASS 0x010601
#define AHCI_PORT0 0x100
#define PX_SIG 0x24
#define PX_SSTS 0x28
#define SSTS_DET_PRESENT 3
#define SIG_ATA 0x00000101u

struct disk_args { uint64_t port; uint32_t sig, ssts; };

static void read_port(void *p)
{
    struct disk_args *a = p;
    a->ssts = mmio_read32(a->port + PX_SSTS);
    a->sig = mmio_read32(a->port + PX_SIG);
}

void test_disk(void)
{
    int dev = -1;
    for (unsigned d = 0; d < 32 && dev < 0; d++)
        for (unsigned fn = 0; fn < 8; fn++) {
            uint32_t id = pci_read32(0, d, fn, 0);
            if ((id & 0xffff) != 0xffff && pci_read32(0, d, fn, 8) >> 8 == AHCI_CLASS) {
                dev = (int)(d << 3 | fn);
                break;
            }
        }
    if (dev < 0) {
        skip("disk", "no AHCI controller on bus 0");
        return;
    }
    unsigned d = (unsigned)dev >> 3, fn = (unsigned)dev & 7;
    uint64_t abar = pci_read32(0, d, fn, 0x24) & ~0xfull;
    struct disk_args a = {abar + AHCI_PORT0, 0, 0};
    read_port(&a);
    if (!abar || (a.ssts & 0xf) != SSTS_DET_PRESENT) {
        skip("disk", "no disk on AHCI 00:%02x.%u port 0 (abar 0x%lx ssts 0x%x)", d, fn, abar, a.ssts);
        return;
    }
    for (unsigned c = 0; c < ncpus; c++) {
        a = (struct disk_args){abar + AHCI_PORT0, 0, 0};
        bool ran = smp_call(c, read_port, &a);
        check(ran && (a.ssts & 0xf) == SSTS_DET_PRESENT && a.sig == SIG_ATA,
              "disk ahci 00:%02x.%u port 0 from cpu%u: ata disk present (ssts 0x%x sig 0x%08x)", d, fn, c, a.ssts,
              a.sig);
    }
}
