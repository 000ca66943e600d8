/* Three allocation sites with known growth shapes, paced by wall time so the shapes hold on a
 * loaded machine (a late tick catches up: ticks are absolute times):
 *   startup_burst: 200 x 128 bytes at start-up, never freed        -> bounded (flat after t=0)
 *   cache_put:     an LRU cache of 64 x 1024-byte entries over 256 keys, 4 lookups per tick;
 *                  it fills within the first second, then every miss replaces the least
 *                  recently used entry (free + malloc)              -> bounded (level at 64)
 *   leak_step:     512 bytes every tick, never freed               -> growing
 * One tick is 20 ms; the program runs SECONDS (default 5) seconds.
 * usage: trend_sites [SECONDS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_NS 20000000LL
#define CACHE_SLOTS 64
#define KEYS 256

struct entry { int key; struct entry *prev, *next; char payload[1024 - 24]; };

static struct entry *head, *tail; /* most recently used first */
static int used;
void *keep[100000]; /* global and read at the end: the compiler keeps every malloc */
int kept;

__attribute__((noinline)) static void startup_burst(void) {
    for (int i = 0; i < 200; i++) {
        keep[kept] = malloc(128);
        memset(keep[kept++], 1, 128);
    }
}

static void unlink_entry(struct entry *e) {
    if (e->prev) e->prev->next = e->next; else head = e->next;
    if (e->next) e->next->prev = e->prev; else tail = e->prev;
}

static void push_front(struct entry *e) {
    e->prev = NULL, e->next = head;
    if (head) head->prev = e;
    head = e;
    if (!tail) tail = e;
}

__attribute__((noinline)) static void cache_put(int key) {
    for (struct entry *e = head; e; e = e->next)
        if (e->key == key) { unlink_entry(e); push_front(e); return; } /* hit */
    if (used == CACHE_SLOTS) { /* full: evict the least recently used */
        struct entry *old = tail;
        unlink_entry(old);
        free(old);
        used--;
    }
    struct entry *e = malloc(sizeof *e);
    memset(e, 0, sizeof *e);
    e->key = key;
    push_front(e);
    used++;
}

__attribute__((noinline)) static void leak_step(void) {
    char *p = malloc(512);
    memset(p, 2, 512);
    keep[kept++] = p;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    uint32_t rnd = 12345;
    startup_burst();
    int64_t t0 = now_ns(), ticks = (int64_t)(seconds * 1e9 / TICK_NS);
    for (int64_t k = 1; k <= ticks; k++) {
        for (int i = 0; i < 4; i++) {
            rnd = rnd * 1103515245u + 12345u;
            cache_put((int)((rnd >> 8) % KEYS));
        }
        leak_step();
        int64_t at = t0 + k * TICK_NS;
        struct timespec ts = {at / 1000000000LL, at % 1000000000LL};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    long sum = 0;
    for (int i = 0; i < kept; i++) sum += ((unsigned char *)keep[i])[0];
    printf("%d leaked, %d cached, %ld\n", kept, used, sum);
    return 0;
}
