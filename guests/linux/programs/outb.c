/*
 * outb PORT VALUE: write one byte to an I/O port (for isa-debug-exit and port tests).
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: outb PORT VALUE\n");
        return 2;
    }
    unsigned long port = strtoul(argv[1], NULL, 0);
    unsigned long value = strtoul(argv[2], NULL, 0);
    if (port > 0xffff || value > 0xff || ioperm(port, 1, 1) != 0) {
        perror("outb");
        return 1;
    }
    outb((unsigned char)value, (unsigned short)port);
    return 0;
}
