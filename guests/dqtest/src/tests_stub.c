#include "dqtest.h"
void test_ipi(void) {}
void test_pingpong(void) {}
void test_pio(void) {}
void test_mmio(void) {}
void test_irq(void) {}
void test_msi(void) {}
void test_mem(void) {}
void test_litmus(void) {}
void test_xmc(void) {}
void test_tsc(void) {}
