/*
 * cmos INDEX [VALUE]: read (print in decimal) or write one byte of the RTC's CMOS RAM
 * through ports 0x70/0x71. CMOS RAM survives a system reset, so tests count boots in it.
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: cmos INDEX [VALUE]\n");
        return 2;
    }
    unsigned long index = strtoul(argv[1], NULL, 0);
    unsigned long value = argc == 3 ? strtoul(argv[2], NULL, 0) : 0;
    if (index < 0x0e || index > 0x7f || value > 0xff) {
        fprintf(stderr, "cmos: INDEX must be 0x0e..0x7f and VALUE 0..255\n");
        return 2;
    }
    if (ioperm(0x70, 2, 1) != 0) {
        perror("cmos: ioperm");
        return 1;
    }
    outb((unsigned char)index, 0x70);
    if (argc == 3) {
        outb((unsigned char)value, 0x71);
    } else {
        printf("%u\n", inb(0x71));
    }
    return 0;
}
