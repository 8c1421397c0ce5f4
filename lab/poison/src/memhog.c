/* GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
 *
 * memhog: the plain-process victim of the poison lab.
 *
 * Maps N MiB of private anonymous memory (no THP), writes every page, then obeys
 * one command per line on stdin and answers one line per command on stdout:
 *
 *   addr N   ADDR page=N vaddr=0x...           virtual address of page N
 *   madv N   MADV page=N ret=R errno=E         madvise(page N, MADV_HWPOISON)
 *            MADV page=N sigbus                (newer kernels raise BUS_MCEERR_AR inside madvise)
 *   read N   READ page=N value=V               first byte of page N
 *            READ page=N sigbus                (the read raised SIGBUS)
 *   ping     PONG                              sync point: earlier async lines are flushed
 *   quit     BYE                               then exit 0
 *
 * Every SIGBUS is reported as its own line, also when it arrives asynchronously
 * (early kill, BUS_MCEERR_AO):
 *   SIGBUS code=C name=BUS_MCEERR_AO|BUS_MCEERR_AR|other addr=0x... lsb=L
 * The process survives an AO signal and every SIGBUS raised by a read/madvise command.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#ifndef BUS_MCEERR_AR
#define BUS_MCEERR_AR 4
#endif
#ifndef BUS_MCEERR_AO
#define BUS_MCEERR_AO 5
#endif

#define PAGE 4096UL

static sigjmp_buf guarded_jump;
static volatile sig_atomic_t guarded;

static void say(const char *text, int len) {
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, text, (size_t)len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return;
        }
        text += n;
        len -= (int)n;
    }
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    char line[160];
    const char *name = info->si_code == BUS_MCEERR_AR ? "BUS_MCEERR_AR"
                     : info->si_code == BUS_MCEERR_AO ? "BUS_MCEERR_AO" : "other";
    int len;
    (void)sig;
    (void)context;
    len = snprintf(line, sizeof line, "SIGBUS code=%d name=%s addr=%p lsb=%d\n",
                   info->si_code, name, info->si_addr, (int)info->si_addr_lsb);
    say(line, len);
    if (guarded)
        siglongjmp(guarded_jump, 1);
    if (info->si_code != BUS_MCEERR_AO)
        _exit(128 + SIGBUS); /* an unexpected synchronous fault: cannot continue */
}

int main(int argc, char **argv) {
    unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 16;
    unsigned long pages = (mib << 20) / PAGE;
    struct sigaction action;
    unsigned char *base;
    char line[128];

    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    /* SA_RESTART: an asynchronous AO signal must not end the fgets() loop */
    action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigaction(SIGBUS, &action, NULL);

    base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(base, pages * PAGE, MADV_NOHUGEPAGE);
    for (unsigned long i = 0; i < pages; i++)
        base[i * PAGE] = (unsigned char)(i | 1);

    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d base=%p pages=%lu\n", (int)getpid(), (void *)base, pages);

    while (fgets(line, sizeof line, stdin)) {
        char command[16];
        unsigned long page = 0;
        unsigned char *addr;
        if (sscanf(line, "%15s %lu", command, &page) < 1)
            continue;
        if (page >= pages) {
            printf("ERROR page=%lu out of range\n", page);
            continue;
        }
        addr = base + page * PAGE;
        if (!strcmp(command, "addr")) {
            printf("ADDR page=%lu vaddr=%p\n", page, (void *)addr);
        } else if (!strcmp(command, "madv")) {
            if (sigsetjmp(guarded_jump, 1) == 0) {
                int ret, err;
                guarded = 1;
                ret = madvise(addr, PAGE, MADV_HWPOISON);
                err = errno;
                guarded = 0;
                printf("MADV page=%lu ret=%d errno=%d\n", page, ret, ret ? err : 0);
            } else {
                guarded = 0;
                printf("MADV page=%lu sigbus\n", page);
            }
        } else if (!strcmp(command, "read")) {
            if (sigsetjmp(guarded_jump, 1) == 0) {
                unsigned value;
                guarded = 1;
                value = *(volatile unsigned char *)addr;
                guarded = 0;
                printf("READ page=%lu value=%u\n", page, value);
            } else {
                guarded = 0;
                printf("READ page=%lu sigbus\n", page);
            }
        } else if (!strcmp(command, "ping")) {
            printf("PONG\n");
        } else if (!strcmp(command, "quit")) {
            break;
        } else {
            printf("ERROR unknown command %s\n", command);
        }
    }
    printf("BYE\n");
    return 0;
}
