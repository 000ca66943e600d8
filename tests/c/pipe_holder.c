/* Opens N pipes in a forked child that keeps them open after the parent (perf record's workload,
 * or the test's) exits: each pipe kmallocs its pipe_inode_info and its buffer array in
 * alloc_pipe_info, so two kernel call chains leak N objects each, under the user frames
 * main <- open_pipes <- pipe. With CHURN, the parent then opens and closes CHURN more pipes
 * (allocated and freed: no leak) so that samples outweigh perf's synthesized side-band.
 * usage: pipe_holder N PIDFILE [CHURN] */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((noinline)) static void open_pipes(int n) {
    int fds[2];
    for (int i = 0; i < n; i++)
        if (pipe(fds) < 0) exit(3);
}

int main(int argc, char **argv) {
    int n = atoi(argv[1]), p[2];
    if (pipe(p)) return 2;
    pid_t pid = fork();
    if (pid == 0) { /* off perf's and the test's pipes, so nobody waits for this child */
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0), dup2(nul, 1), dup2(nul, 2);
        close(p[0]);
        open_pipes(n);
        if (write(p[1], "x", 1) != 1) return 2;
        sleep(120); /* killed by the test */
        return 0;
    }
    char c;
    close(p[1]);
    if (read(p[0], &c, 1) != 1) return 2;
    FILE *f = fopen(argv[2], "w");
    fprintf(f, "%d\n", (int)pid);
    fclose(f);
    for (int i = argc > 3 ? atoi(argv[3]) : 0; i > 0; i--) {
        int q[2];
        if (pipe(q)) return 2;
        close(q[0]), close(q[1]);
    }
    return 0;
}
