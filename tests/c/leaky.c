/* Known leaks for kmemleak-offline's user-space allocator tests.
 *
 * Leaked per function (bytes / objects):
 *   leak_a         700 / 7     (7 x malloc(100))
 *   leak_b       12288 / 3     (3 x malloc(4096))
 *   leak_calloc    480 / 2     (2 x calloc(5, 48))
 *   leak_realloc  1000 / 1     (realloc chain NULL -> 10 -> 100 -> 1000, last block leaked)
 *   leak_memalign  512 / 1     (posix_memalign(&p, 64, 512))
 * Not leaked: churn (malloc/free, calloc->realloc->free), a failed malloc, blocks allocated by
 * main and freed by another thread, a posix_memalign'd block that is freed.
 * With argument "wait": read one byte from stdin before starting and another before exiting, so a
 * tracer can attach (-p) and read /proc/PID/maps; it writes "R\n" when the work is done.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink[64];
static void *shared[16];

NOINLINE void leak_a(void) { for (int i = 0; i < 7; i++) sink[i] = malloc(100); }
NOINLINE void leak_b(void) { for (int i = 0; i < 3; i++) sink[8 + i] = malloc(4096); }
NOINLINE void leak_calloc(void) { for (int i = 0; i < 2; i++) sink[12 + i] = calloc(5, 48); }
NOINLINE void leak_realloc(void) {
    void *p = realloc(NULL, 10);
    p = realloc(p, 100);
    p = realloc(p, 1000);
    sink[16] = p;
}
NOINLINE void leak_memalign(void) {
    void *p = NULL, *q = NULL;
    if (posix_memalign(&p, 64, 512) == 0) sink[17] = p;
    if (posix_memalign(&q, 64, 256) == 0) free(q);
}
NOINLINE void churn(void) {
    for (int i = 0; i < 50; i++) { sink[20] = malloc(32 + i); free(sink[20]); }
    for (int i = 0; i < 5; i++) {
        void *p = calloc(4, 8);
        p = realloc(p, 4096);
        free(p);
    }
    sink[21] = malloc(SIZE_MAX / 2); /* fails: NULL, not an allocation */
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

int main(int argc, char **argv) {
    char c;
    int wait = argc > 1 && argv[1][0] == 'w';
    if (wait && read(0, &c, 1) < 0) return 1;
    leak_a();
    leak_b();
    leak_calloc();
    leak_realloc();
    leak_memalign();
    churn();
    cross_thread();
    if (wait && (write(1, "R\n", 2) != 2 || read(0, &c, 1) < 0)) return 1;
    return 0;
}
