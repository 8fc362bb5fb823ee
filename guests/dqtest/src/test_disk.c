/*
 * test_disk.c - an IDE disk, seen from every CPU.
 *
 * With -device ide-hd,bus=ide.0 on q35 the disk sits on port 0 of the ICH9 AHCI
 * function (00:1f.2, class 01:06:01).  The firmware has reset the port, so its
 * status (PxSSTS) must say "device present, link up" and its signature (PxSIG)
 * must be an ATA disk's, read through the controller's MMIO (ABAR, BAR5) by every
 * CPU.  On pc the disk is the primary master of the PIIX IDE function, at the
 * legacy ports 0x1f0-0x1f7 (interrupts off through the device control
 * register): every CPU sends it IDENTIFY DEVICE, whose answer must name an ATA
 * device and QEMU's disk model; then each CPU writes a sector of its own with
 * PIO and every CPU reads it back: one disk, whichever CPU drives the ports.
 * Without such a controller and disk the group is skipped.
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

#define ATA_DATA 0x1f0
#define ATA_DRIVE 0x1f6
#define ATA_STATUS 0x1f7          /* command when written */
#define ATA_CONTROL 0x3f6
#define ATA_BSY 0x80
#define ATA_DRQ 0x08
#define ATA_ERR 0x01
#define ATA_COUNT 0x1f2
#define ATA_LBA0 0x1f3
#define ATA_LBA1 0x1f4
#define ATA_LBA2 0x1f5
#define ATA_READ 0x20
#define ATA_WRITE 0x30
#define ATA_FLUSH 0xe7
#define ATA_IDENTIFY 0xec
#define ATA_MODEL "QEMU HARDDISK"

struct ata_args { bool ok; uint16_t word0; char model[16]; };

static bool ata_wait(uint8_t mask, uint8_t want)
{
    uint64_t end = deadline_ms(opt.timeout_ms);
    for (;;) {
        uint8_t st = inb(ATA_STATUS);
        if (st != 0xff && (st & (mask | ATA_BSY)) == want && !(st & ATA_ERR))
            return true;
        if (st == 0 || st == 0xff || (st & ATA_ERR) || expired(end))
            return false;
        cpu_relax();
    }
}

static void ata_identify(void *p)
{
    struct ata_args *a = p;
    uint16_t id[256];
    outb(ATA_CONTROL, 0x02);              /* nIEN: no interrupt */
    outb(ATA_DRIVE, 0xa0);                /* master */
    if (!ata_wait(0, 0))
        return;
    outb(ATA_STATUS, ATA_IDENTIFY);
    if (!ata_wait(ATA_DRQ, ATA_DRQ))
        return;
    for (unsigned i = 0; i < 256; i++)
        id[i] = inw(ATA_DATA);
    a->word0 = id[0];
    for (unsigned i = 0; i < sizeof(a->model) / 2; i++) {   /* words 27..: big-endian pairs */
        a->model[2 * i] = (char)(id[27 + i] >> 8);
        a->model[2 * i + 1] = (char)id[27 + i];
    }
    a->model[sizeof(a->model) - 1] = '\0';
    a->ok = !(a->word0 & 0x8000) && memcmp(a->model, ATA_MODEL, strlen(ATA_MODEL)) == 0;
}

struct sector_args { uint32_t lba; uint16_t fill; bool ok; uint16_t first; };

/* One sector by PIO, LBA28, to or from the primary master; the sector holds fill + i in word i. */
static void ata_sector(void *p, bool write)
{
    struct sector_args *a = p;
    outb(ATA_CONTROL, 0x02);
    outb(ATA_DRIVE, (uint8_t)(0xe0 | ((a->lba >> 24) & 0xf)));
    if (!ata_wait(0, 0))
        return;
    outb(ATA_COUNT, 1);
    outb(ATA_LBA0, (uint8_t)a->lba);
    outb(ATA_LBA1, (uint8_t)(a->lba >> 8));
    outb(ATA_LBA2, (uint8_t)(a->lba >> 16));
    outb(ATA_STATUS, write ? ATA_WRITE : ATA_READ);
    if (!ata_wait(ATA_DRQ, ATA_DRQ))
        return;
    bool same = true;
    for (unsigned i = 0; i < 256; i++) {
        if (write) {
            outw(ATA_DATA, (uint16_t)(a->fill + i));
        } else {
            uint16_t w = inw(ATA_DATA);
            if (i == 0)
                a->first = w;
            same &= w == (uint16_t)(a->fill + i);
        }
    }
    if (!ata_wait(0, 0))
        return;
    if (write) {
        outb(ATA_STATUS, ATA_FLUSH);
        if (!ata_wait(0, 0))
            return;
    }
    a->ok = same;
}

static void ata_write_fn(void *p) { ata_sector(p, true); }
static void ata_read_fn(void *p) { ata_sector(p, false); }

static bool legacy_ide_disk(void)
{
    struct ata_args a = {0};
    ata_identify(&a);
    if (!a.ok) {
        skip("disk", "no AHCI controller on bus 0 and no ATA disk at port 0x%x", ATA_DATA);
        return false;
    }
    for (unsigned c = 0; c < ncpus; c++) {
        a = (struct ata_args){0};
        bool ran = smp_call(c, ata_identify, &a);
        check(ran && a.ok, "disk legacy ide 0x%x master from cpu%u: identify says ata, model '%s'", ATA_DATA, c,
              a.model);
    }
    for (unsigned w = 0; w < ncpus; w++) {
        struct sector_args wr = {1 + w, (uint16_t)(0x5a00 + 0x111 * w), false, 0};
        bool ran = smp_call(w, ata_write_fn, &wr);
        for (unsigned r = 0; r < ncpus; r++) {
            struct sector_args rd = wr;
            rd.ok = false;
            bool ran_r = ran && wr.ok && smp_call(r, ata_read_fn, &rd);
            check(ran_r && rd.ok, "disk legacy ide sector %u written by cpu%u, read back by cpu%u (first word 0x%04x)",
                  wr.lba, w, r, rd.first);
        }
    }
    return true;
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
        legacy_ide_disk();
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
