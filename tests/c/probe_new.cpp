// Known leaks through C++ operator new for the perf-probe import test (tests/test_import_perf_probe.py).
//   leak_new    K_NEW x new Big (sizeof(Big) == BIG bytes)
//   leak_array  one new char[N_ARRAY] (libstdc++'s operator new[] jumps to operator new)
// Not leaked: churn (new/delete, sized delete, new[]/delete[]).
#include <new>
#define K_NEW 3
#define BIG 120
#define N_ARRAY 333
struct Big { char b[BIG]; };
Big *volatile keep[16];
char *volatile keep_c;
__attribute__((noinline)) void leak_new() { for (int i = 0; i < K_NEW; i++) keep[i] = new Big; }
__attribute__((noinline)) void leak_array() { keep_c = new char[N_ARRAY]; }
__attribute__((noinline)) void churn() {
    for (int i = 0; i < 5; i++) { Big *p = new Big; keep[5] = p; delete p; }
    char *a = new char[50];
    keep_c = a;
    delete[] a;
}
int main() {
    leak_new();
    leak_array();
    churn();
    return 0;
}
