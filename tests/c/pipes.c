/* Kernel leak for samples/record_samples.sh: open N pipes (default 100), keep them open, sleep.
 * Each pipe kmallocs a pipe_inode_info and its buffer array in the kernel; nothing frees them
 * while the program runs. Usage: pipes [N] [SECONDS] */
#include <stdlib.h>
#include <unistd.h>

__attribute__((noinline)) static int open_pipes(int n, int *fds) {
    for (int i = 0; i < n; i++)
        if (pipe(fds + 2 * i) != 0) return i;
    return n;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    int secs = argc > 2 ? atoi(argv[2]) : 3;
    int *fds = calloc(2 * (size_t)n, sizeof(int));
    if (!fds || open_pipes(n, fds) != n) return 1;
    sleep(secs);
    return 0;
}
