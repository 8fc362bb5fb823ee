/* pci.c - PCI configuration mechanism #1 (ports 0xcf8/0xcfc). */
#include "dqtest.h"

static uint32_t cfg_addr(unsigned bus, unsigned dev, unsigned fn, unsigned reg)
{
    return 0x80000000u | (bus << 16) | (dev << 11) | (fn << 8) | (reg & 0xfc);
}

uint32_t pci_read32(unsigned bus, unsigned dev, unsigned fn, unsigned reg)
{
    outl(0xcf8, cfg_addr(bus, dev, fn, reg));
    return inl(0xcfc);
}

void pci_write32(unsigned bus, unsigned dev, unsigned fn, unsigned reg, uint32_t v)
{
    outl(0xcf8, cfg_addr(bus, dev, fn, reg));
    outl(0xcfc, v);
}

uint16_t pci_read16(unsigned bus, unsigned dev, unsigned fn, unsigned reg)
{
    outl(0xcf8, cfg_addr(bus, dev, fn, reg));
    return inw((uint16_t)(0xcfc + (reg & 2)));
}

void pci_write16(unsigned bus, unsigned dev, unsigned fn, unsigned reg, uint16_t v)
{
    outl(0xcf8, cfg_addr(bus, dev, fn, reg));
    outw((uint16_t)(0xcfc + (reg & 2)), v);
}

/* Offset of capability cap_id in the device's list, or 0. */
unsigned pci_find_cap(unsigned bus, unsigned dev, unsigned fn, uint8_t cap_id)
{
    if (!(pci_read16(bus, dev, fn, 0x06) & (1u << 4)))   /* status: capabilities list */
        return 0;
    unsigned off = pci_read32(bus, dev, fn, 0x34) & 0xfc;
    for (int guard = 0; off && guard < 48; guard++) {
        uint32_t h = pci_read32(bus, dev, fn, off);
        if ((h & 0xff) == cap_id)
            return off;
        off = (h >> 8) & 0xfc;
    }
    return 0;
}
