/* Kernel allocations with known growth shapes, paced by wall time (absolute ticks of 20 ms, so a
 * late tick catches up on a loaded machine):
 *   hold_socket: one UDP socket opened per tick and kept open    -> its sk_alloc chain grows
 *   churn_pipes: one pipe opened per tick into a ring of 16, the oldest closed once the ring is
 *                full (pipe buffers are freed synchronously)   -> alloc_pipe_info stays bounded
 * The program runs SECONDS (default 5) seconds, then exits (closing everything).
 * usage: udp_steady [SECONDS] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS 20000000LL
#define RING 16

static int ring[RING][2];
static int ring_used, ring_next;
int held_fd[100000];
int held;

__attribute__((noinline)) static int hold_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    held_fd[held++] = fd;
    return fd;
}

__attribute__((noinline)) static void churn_pipes(void) {
    if (ring_used == RING) {
        close(ring[ring_next][0]);
        close(ring[ring_next][1]);
        ring_used--;
    }
    if (pipe(ring[ring_next]) != 0) exit(3);
    ring_next = (ring_next + 1) % RING;
    ring_used++;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    int64_t t0 = now_ns(), ticks = (int64_t)(seconds * 1e9 / TICK_NS);
    for (int64_t k = 1; k <= ticks; k++) {
        if (hold_socket() < 0) return 2;
        churn_pipes();
        int64_t at = t0 + k * TICK_NS;
        struct timespec ts = {at / 1000000000LL, at % 1000000000LL};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    printf("%d sockets held, %d pipes open\n", held, ring_used);
    return 0;
}
