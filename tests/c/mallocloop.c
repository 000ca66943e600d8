/* malloc/free loop for bench/malloc_overhead.sh: prints nanoseconds per iteration (one malloc
 * and one free each). Usage: mallocloop N [SIZE] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void *volatile sink;

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 64;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        sink = malloc(size);
        free(sink);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%ld iterations %.1f ns/iter\n", n, ns / n);
    return 0;
}
