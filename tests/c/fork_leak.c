/* fork() without exec: the child runs on the maps it inherited (the kernel reports no new mmap
 * for them), so naming its frames needs the parent's maps as of the fork.
 *
 * Leaked per function (bytes / objects):
 *   child_leak    1280 / 5     (5 x malloc(256), in the forked child)
 *   parent_leak   3000 / 3     (3 x malloc(1000), in the parent, before the fork)
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink[16];

NOINLINE void child_leak(void) { for (int i = 0; i < 5; i++) sink[i] = malloc(256); }
NOINLINE void parent_leak(void) { for (int i = 0; i < 3; i++) sink[8 + i] = malloc(1000); }

int main(void) {
    /* the parent leaks before forking: the analysis matches blocks by address alone, and after
     * the fork both processes hand out the same heap addresses (a later block of one would
     * replace an earlier one of the other) */
    parent_leak();
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        child_leak();
        _exit(0);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid) return 1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
