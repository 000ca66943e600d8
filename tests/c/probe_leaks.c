/* Known leaks for the perf-probe import test (tests/test_import_perf_probe.py).
 *
 * Leaked per function (bytes / objects); the test works these out again from the counts below:
 *   leak_malloc          K_MALLOC x malloc(N_MALLOC)
 *   leak_calloc          K_CALLOC x calloc(CALLOC_N, CALLOC_SZ)
 *   leak_realloc_grow    one block: malloc(16) grown by realloc to 100, then 1000 (the last leaks)
 *   leak_realloc_null    K_RNULL x realloc(NULL, N_RNULL) (glibc calls malloc inside: once each)
 *   leak_memalign        K_PMA x posix_memalign(&p, 64, N_PMA), one more is freed
 *   leak_aligned         K_ALIGNED x aligned_alloc(64, N_ALIGNED)
 *   leak_reallocarray    one reallocarray(NULL, RA_N, RA_SZ)
 *   leak_memalign_valloc one memalign(32, N_MEMALIGN) and one valloc(N_VALLOC)
 * Not leaked: realloc(p, 0) (glibc frees p and returns NULL), malloc/free churn, calloc ->
 * realloc -> free, a failed malloc (NULL), blocks main allocates and another thread frees.
 * Call chains: every function is noinline and called from main, so the first user frame of a
 * return probe's call chain names it.
 */
#include <pthread.h>
#include <stdint.h>
#include <malloc.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))
#define K_MALLOC 7
#define N_MALLOC 100
#define K_CALLOC 3
#define CALLOC_N 5
#define CALLOC_SZ 48
#define K_RNULL 4
#define N_RNULL 300
#define K_PMA 2
#define N_PMA 512
#define K_ALIGNED 2
#define N_ALIGNED 192
#define RA_N 6
#define RA_SZ 40
#define N_MEMALIGN 160
#define N_VALLOC 300

void *volatile sink[64];
void *volatile nil; /* NULL the compiler cannot see: realloc(nil, n) stays a realloc call */
static void *shared[16];

NOINLINE void leak_malloc(void) { for (int i = 0; i < K_MALLOC; i++) sink[i] = malloc(N_MALLOC); }
NOINLINE void leak_calloc(void) { for (int i = 0; i < K_CALLOC; i++) sink[8 + i] = calloc(CALLOC_N, CALLOC_SZ); }
NOINLINE void leak_realloc_grow(void) {
    void *p = malloc(16);
    p = realloc(p, 100);
    p = realloc(p, 1000);
    sink[12] = p;
}
NOINLINE void leak_realloc_null(void) { for (int i = 0; i < K_RNULL; i++) sink[13 + i] = realloc(nil, N_RNULL); }
NOINLINE void leak_memalign(void) {
    void *p = NULL, *q = NULL;
    for (int i = 0; i < K_PMA; i++)
        if (posix_memalign(&p, 64, N_PMA) == 0) sink[18 + i] = p;
    if (posix_memalign(&q, 64, 256) == 0) free(q);
}
NOINLINE void leak_aligned(void) { for (int i = 0; i < K_ALIGNED; i++) sink[21 + i] = aligned_alloc(64, N_ALIGNED); }
NOINLINE void leak_reallocarray(void) { sink[24] = reallocarray(nil, RA_N, RA_SZ); }
NOINLINE void leak_memalign_valloc(void) {
    sink[25] = memalign(32, N_MEMALIGN);
    sink[26] = valloc(N_VALLOC);
}
NOINLINE void realloc_zero(void) {
    for (int i = 0; i < 3; i++) {
        void *p = malloc(64);
        sink[30] = realloc(p, 0); /* frees p, returns NULL */
    }
}
NOINLINE void churn(void) {
    for (int i = 0; i < 20; i++) { sink[31] = malloc(32 + i); free(sink[31]); }
    for (int i = 0; i < 3; i++) {
        void *p = calloc(4, 8);
        p = realloc(p, 4096);
        free(p);
    }
    sink[32] = malloc(SIZE_MAX / 2); /* fails: NULL, not an allocation */
}
static void *freer(void *arg) {
    (void)arg;
    for (int i = 0; i < 16; i++) free(shared[i]);
    return NULL;
}
NOINLINE void cross_thread(void) {
    for (int i = 0; i < 16; i++) shared[i] = malloc(200);
    pthread_t t;
    pthread_create(&t, NULL, freer, NULL);
    pthread_join(t, NULL);
}

int main(void) {
    leak_malloc();
    leak_calloc();
    leak_realloc_grow();
    leak_realloc_null();
    leak_memalign();
    leak_aligned();
    leak_reallocarray();
    leak_memalign_valloc();
    realloc_zero();
    churn();
    cross_thread();
    return 0;
}
