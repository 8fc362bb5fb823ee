/*
 * acpi.c - find the RSDP, walk the RSDT/XSDT, and extract what dqtest needs:
 * MADT (CPUs, IOAPICs, interrupt source overrides), HPET base address, and
 * FADT/DSDT data for ACPI poweroff.
 */
#include "dqtest.h"

struct platform plat;

struct sdt_header {
    char sig[4];
    uint32_t length;
    uint8_t revision, checksum;
    char oem_id[6], oem_table_id[8];
    uint32_t oem_revision, creator_id, creator_revision;
} __attribute__((packed));

static bool checksum_ok(const void *p, size_t len)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum += ((const uint8_t *)p)[i];
    return sum == 0;
}

static const uint8_t *scan_rsdp(uint64_t start, uint64_t len)
{
    for (uint64_t a = start; a + 20 <= start + len; a += 16) {
        const uint8_t *p = phys(a);
        if (memcmp(p, "RSD PTR ", 8) == 0 && checksum_ok(p, 20))
            return p;
    }
    return NULL;
}

static void parse_madt(const struct sdt_header *h)
{
    const uint8_t *p = (const uint8_t *)h;
    plat.madt_found = true;
    plat.lapic_addr = *(const uint32_t *)(p + 36);
    for (uint32_t off = 44; off + 2 <= h->length;) {
        uint8_t type = p[off], len = p[off + 1];
        if (len < 2)
            break;
        const uint8_t *e = p + off;
        switch (type) {
        case 0: /* processor local APIC: enabled (bit 0) or online capable (bit 1) */
            if ((*(const uint32_t *)(e + 4) & 3) && plat.ncpus_madt < MAX_CPUS)
                plat.apic_ids[plat.ncpus_madt++] = e[3];
            break;
        case 1: /* IOAPIC */
            if (plat.nioapic < ARRAY_SIZE(plat.ioapic)) {
                struct ioapic_info *io = &plat.ioapic[plat.nioapic++];
                io->id = e[2];
                io->addr = *(const uint32_t *)(e + 4);
                io->gsi_base = *(const uint32_t *)(e + 8);
            }
            break;
        case 2: /* interrupt source override */
            if (plat.niso < ARRAY_SIZE(plat.iso)) {
                struct iso_info *s = &plat.iso[plat.niso++];
                s->bus = e[2];
                s->source = e[3];
                s->gsi = *(const uint32_t *)(e + 4);
                s->flags = *(const uint16_t *)(e + 8);
            }
            break;
        case 5: /* local APIC address override */
            plat.lapic_addr = *(const uint64_t *)(e + 4);
            break;
        default:
            break;
        }
        off += len;
    }
}

/* Find SLP_TYPa of the \_S5 package in AML: "_S5_" PackageOp PkgLength NumElements ... */
static void parse_dsdt_s5(const struct sdt_header *h)
{
    const uint8_t *p = (const uint8_t *)h;
    for (uint32_t i = sizeof(*h); i + 8 < h->length; i++) {
        if (memcmp(p + i, "_S5_", 4) != 0 || p[i + 4] != 0x12)
            continue;
        uint32_t j = i + 5;
        j += (uint32_t)((p[j] >> 6) & 3) + 1;   /* PkgLength */
        j++;                                    /* NumElements */
        uint8_t op = p[j];
        if (op == 0x0a)                         /* BytePrefix */
            plat.slp_typ_s5 = p[j + 1];
        else if (op == 0x00 || op == 0x01)      /* ZeroOp / OneOp */
            plat.slp_typ_s5 = op;
        else
            plat.slp_typ_s5 = op;
        return;
    }
}

static void parse_table(const struct sdt_header *h)
{
    if (!checksum_ok(h, h->length))
        return;
    if (memcmp(h->sig, "APIC", 4) == 0) {
        parse_madt(h);
    } else if (memcmp(h->sig, "HPET", 4) == 0) {
        const uint8_t *p = (const uint8_t *)h;
        if (p[40] == 0) /* system memory address space */
            plat.hpet_addr = *(const uint64_t *)(p + 44);
    } else if (memcmp(h->sig, "FACP", 4) == 0) {
        const uint8_t *p = (const uint8_t *)h;
        plat.pm1a_cnt = *(const uint32_t *)(p + 64);
        uint32_t dsdt = *(const uint32_t *)(p + 40);
        if (h->length >= 148 && *(const uint64_t *)(p + 140))
            dsdt = (uint32_t) * (const uint64_t *)(p + 140);
        if (dsdt) {
            const struct sdt_header *d = (const struct sdt_header *)(uint64_t)dsdt;
            if (memcmp(d->sig, "DSDT", 4) == 0)
                parse_dsdt_s5(d);
        }
        plat.pm_found = plat.pm1a_cnt != 0;
    }
}

void acpi_init(void)
{
    uint64_t ebda = (uint64_t)(*(volatile uint16_t *)phys(0x40e)) << 4;
    const uint8_t *rsdp = NULL;
    if (ebda >= 0x80000 && ebda < 0xa0000)
        rsdp = scan_rsdp(ebda, 1024);
    if (!rsdp)
        rsdp = scan_rsdp(0xe0000, 0x20000);
    if (!rsdp) {
        kprintf("# acpi: no RSDP found\n");
        return;
    }
    uint8_t rev = rsdp[15];
    uint64_t xsdt = rev >= 2 ? *(const uint64_t *)(rsdp + 24) : 0;
    uint32_t rsdt = *(const uint32_t *)(rsdp + 16);
    if (xsdt && xsdt < (1ull << 32)) {
        const struct sdt_header *x = (const struct sdt_header *)xsdt;
        size_t n = (x->length - sizeof(*x)) / 8;
        for (size_t i = 0; i < n; i++) {
            uint64_t a;
            memcpy(&a, (const uint8_t *)x + sizeof(*x) + 8 * i, 8);
            if (a && a < (1ull << 32))
                parse_table((const struct sdt_header *)a);
        }
    } else if (rsdt) {
        const struct sdt_header *r = (const struct sdt_header *)(uint64_t)rsdt;
        size_t n = (r->length - sizeof(*r)) / 4;
        for (size_t i = 0; i < n; i++) {
            uint32_t a = *(const uint32_t *)((const uint8_t *)r + sizeof(*r) + 4 * i);
            if (a)
                parse_table((const struct sdt_header *)(uint64_t)a);
        }
    }
    kprintf("# acpi: rsdp=%p rev=%u madt=%s cpus=%u ioapics=%u overrides=%u hpet=0x%lx pm1a_cnt=0x%x s5=%u\n",
            (const void *)rsdp, rev, plat.madt_found ? "yes" : "no", plat.ncpus_madt, plat.nioapic,
            plat.niso, plat.hpet_addr, plat.pm1a_cnt, plat.slp_typ_s5);
}

/* Map an ISA IRQ to its GSI using the MADT overrides; flags get the MPS INTI flags. */
uint32_t irq_to_gsi(uint8_t irq, uint16_t *flags)
{
    for (unsigned i = 0; i < plat.niso; i++)
        if (plat.iso[i].bus == 0 && plat.iso[i].source == irq) {
            *flags = plat.iso[i].flags;
            return plat.iso[i].gsi;
        }
    *flags = 0;
    return irq;
}
