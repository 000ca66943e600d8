/* fork() without exec: the child runs on the maps it inherited (the kernel reports no new mmap
 * for them), so naming its frames needs the parent's maps as of the fork.
 *
 * Leaked per function (bytes / objects):
 *   child_leak    1280 / 5     (5 x malloc(256), in the forked child)
 *   parent_leak   3000 / 3     (3 x malloc(1000), in the parent, before the fork)
 *   parent_late_leak 512 / 2   (2 x malloc(256), in the parent once the child has exited: the
 *                               same addresses the child's first blocks got, in another process)
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink[16];

NOINLINE void child_leak(void) { for (int i = 0; i < 5; i++) sink[i] = malloc(256); }
NOINLINE void parent_leak(void) { for (int i = 0; i < 3; i++) sink[8 + i] = malloc(1000); }
NOINLINE void parent_late_leak(void) { for (int i = 0; i < 2; i++) sink[12 + i] = malloc(256); }

int main(void) {
    parent_leak();
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        child_leak();
        _exit(0);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid) return 1;
    parent_late_leak();  /* blocks of one process never match another's with the same address */
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
