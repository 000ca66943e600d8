/* Kernel allocation load for the record benches: NPROC processes doing socket()+close() (one
   kmalloc and one kfree of the socket's wq, and more) for SECS seconds. */
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2;
    double secs = argc > 2 ? atof(argv[2]) : 5;
    for (int p = 0; p < n; p++)
        if (fork() == 0) {
            struct timespec t0, t;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (long i = 0;; i++) {
                close(socket(AF_UNIX, SOCK_STREAM, 0));
                if ((i & 1023) == 0) {
                    clock_gettime(CLOCK_MONOTONIC, &t);
                    if (t.tv_sec - t0.tv_sec + (t.tv_nsec - t0.tv_nsec) / 1e9 > secs) _exit(0);
                }
            }
        }
    while (wait(NULL) > 0)
        ;
    return 0;
}
