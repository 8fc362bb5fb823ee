/*
 * inb PORT: read one byte from an I/O port and print it in decimal (255 when nothing
 * answers on that port).
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: inb PORT\n");
        return 2;
    }
    unsigned long port = strtoul(argv[1], NULL, 0);
    if (port > 0xffff || ioperm(port, 1, 1) != 0) {
        perror("inb");
        return 1;
    }
    printf("%u\n", inb((unsigned short)port));
    return 0;
}
