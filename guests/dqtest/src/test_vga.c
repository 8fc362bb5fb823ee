/*
 * test_vga.c - a VGA CRTC index/data register pair used from every CPU.
 *
 * With a VGA device (-device VGA) the CRTC sits at 0x3d4 (index) / 0x3d5
 * (data) once the Miscellaneous Output register (write 0x3c2, read 0x3cc) selects
 * colour emulation; dqtest selects it from the BSP.  Then, for every ordered pair
 * of CPUs, A writes the index of the cursor location register, B writes a value
 * to the data port, and A reads it back through the data port: one register
 * file, whichever CPU uses it.  Without a VGA device the group is skipped.
 */
#include "dqtest.h"

#define VGA_MISC_WRITE 0x3c2
#define VGA_MISC_READ 0x3cc
#define VGA_CRTC_INDEX 0x3d4
#define VGA_CRTC_DATA 0x3d5
#define MISC_COLOR 0x67          /* colour emulation (0x3dx), RAM enabled, 28 MHz clock */
#define CRTC_CURSOR_LO 0x0f

struct crtc_args { uint8_t value, read; };

static void crtc_index(void *p)
{
    (void)p;
    outb(VGA_CRTC_INDEX, CRTC_CURSOR_LO);
}

static void crtc_write(void *p)
{
    struct crtc_args *a = p;
    outb(VGA_CRTC_DATA, a->value);
}

static void crtc_read(void *p)
{
    struct crtc_args *a = p;
    a->read = inb(VGA_CRTC_DATA);
}

void test_vga(void)
{
    outb(VGA_MISC_WRITE, MISC_COLOR);
    uint8_t misc = inb(VGA_MISC_READ);
    if (misc != MISC_COLOR) {
        skip("vga", "no VGA device (misc output register reads 0x%02x; add -device VGA)", misc);
        return;
    }
    uint8_t value = 0x11;
    for (unsigned a = 0; a < ncpus; a++)
        for (unsigned b = 0; b < ncpus; b++) {
            struct crtc_args args = {value, 0};
            bool ran = smp_call(a, crtc_index, &args) && smp_call(b, crtc_write, &args) &&
                       smp_call(a, crtc_read, &args);
            check(ran && args.read == value,
                  "vga crtc index 0x%02x from cpu%u, data 0x%02x from cpu%u, read back by cpu%u: 0x%02x", CRTC_CURSOR_LO,
                  a, value, b, a, args.read);
            value = (uint8_t)(value + 0x1d);
        }
}
