/* GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
 *
 * uffd-poison: the process of the poison lab's uffd-poison experiment. It does, on one page
 * of an ordinary anonymous mapping, what a migration destination has to do to install a hole
 * it received: userfaultfd registration and UFFDIO_POISON (Linux 6.6+).
 *
 * Maps N pages (default 64) of private anonymous memory (no THP) and fills every byte of page
 * i with pattern(i). Then obeys one command per line on stdin, one answer line per command:
 *
 *   api F       API requested=0x.. ret=R errno=E features=0x.. ioctls=0x..
 *               UFFDIO_API on a new userfaultfd, asking for the features F (hex); closed again
 *   poison N    POISON page=N dontneed=R api=R api_errno=E api_features=0x.. api_poison=0|1
 *                      register=R register_errno=E register_ioctls=0x.. ret=R errno=E updated=U
 *               MADV_DONTNEED on page N, a userfaultfd (UFFD_FEATURE_POISON asked for; without
 *               it, features 0), UFFDIO_REGISTER of the whole mapping (MISSING mode), then
 *               UFFDIO_POISON on page N. The userfaultfd stays open.
 *   release     RELEASE unregister=R errno=E close=R
 *               UFFDIO_UNREGISTER of the whole mapping, close() of the userfaultfd
 *   pagemap N   PAGEMAP page=N vaddr=0x.. raw=0x..        this process's /proc/self/pagemap entry
 *   read N      READ page=N value=V | READ page=N sigbus  first byte of page N
 *   check N     CHECK page=N good=G bad=B | CHECK page=N sigbus   bytes that hold pattern(N)
 *   checkall N  CHECKALL skip=N pages=P good_pages=G bad_pages=B  every page but N
 *   fork N      a child prints "CHILD PAGEMAP ...", "CHILD READ ..." (page N) and
 *               "CHILD CHECK ..." (page N+1), exits 0; then FORK child=PID status=exit:C|signal:S
 *   ping        PONG
 *   quit        BYE, then exit 0
 *
 * Every SIGBUS is reported on its own line (prefixed "CHILD " in the child):
 *   SIGBUS code=C name=BUS_MCEERR_AR|BUS_MCEERR_AO|BUS_ADRERR|other addr=0x... lsb=L
 *
 * Debian 12's kernel headers (6.1) predate UFFDIO_POISON: its values are defined here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef BUS_MCEERR_AR
#define BUS_MCEERR_AR 4
#endif
#ifndef BUS_MCEERR_AO
#define BUS_MCEERR_AO 5
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1ULL << 14)
#endif
#ifndef UFFDIO_POISON
#define _UFFDIO_POISON 0x08
struct uffdio_poison {
    struct uffdio_range range;
    __u64 mode;
    __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

#define PAGE 4096UL

static sigjmp_buf guarded_jump;
static volatile sig_atomic_t guarded;
static const char *prefix = "";
static unsigned char *base;
static unsigned long pages;
static int uffd = -1;

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
    char line[200];
    const char *name = info->si_code == BUS_MCEERR_AR ? "BUS_MCEERR_AR"
                     : info->si_code == BUS_MCEERR_AO ? "BUS_MCEERR_AO"
                     : info->si_code == BUS_ADRERR ? "BUS_ADRERR" : "other";
    int len;
    (void)sig;
    (void)context;
    len = snprintf(line, sizeof line, "%sSIGBUS code=%d name=%s addr=%p lsb=%d\n", prefix,
                   info->si_code, name, info->si_addr, (int)info->si_addr_lsb);
    say(line, len);
    if (guarded)
        siglongjmp(guarded_jump, 1);
    _exit(128 + SIGBUS); /* an unexpected synchronous fault: cannot continue */
}

static unsigned char pattern(unsigned long page) {
    return (unsigned char)((page * 37 + 11) % 255 + 1); /* never 0: a zero page cannot pass */
}

static int new_uffd(void) {
    return (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
}

static void api(unsigned long long features) {
    struct uffdio_api request;
    int fd = new_uffd(), ret, err;
    if (fd < 0) {
        printf("API requested=0x%llx ret=-1 errno=%d stage=userfaultfd\n", features, errno);
        return;
    }
    memset(&request, 0, sizeof request);
    request.api = UFFD_API;
    request.features = features;
    ret = ioctl(fd, UFFDIO_API, &request);
    err = errno;
    printf("API requested=0x%llx ret=%d errno=%d features=0x%llx ioctls=0x%llx\n", features, ret,
           ret ? err : 0, (unsigned long long)request.features, (unsigned long long)request.ioctls);
    close(fd);
}

static void poison(unsigned long page) {
    struct uffdio_api request;
    struct uffdio_register reg;
    struct uffdio_poison poison_request;
    int dontneed, api_ret, api_errno, poisoned = 1, reg_ret, reg_errno, ret, err;
    unsigned char *addr = base + page * PAGE;

    dontneed = madvise(addr, PAGE, MADV_DONTNEED);
    if (uffd >= 0)
        close(uffd);
    uffd = new_uffd();
    if (uffd < 0) {
        printf("POISON page=%lu dontneed=%d api=-1 api_errno=%d stage=userfaultfd\n", page, dontneed, errno);
        return;
    }
    memset(&request, 0, sizeof request);
    request.api = UFFD_API;
    request.features = UFFD_FEATURE_POISON;
    api_ret = ioctl(uffd, UFFDIO_API, &request);
    api_errno = api_ret ? errno : 0;
    if (api_ret) {
        /* no UFFD_FEATURE_POISON (before 6.6): a handshake without it, to try the ioctl anyway */
        poisoned = 0;
        close(uffd);
        uffd = new_uffd();
        memset(&request, 0, sizeof request);
        request.api = UFFD_API;
        if (uffd < 0 || ioctl(uffd, UFFDIO_API, &request)) {
            printf("POISON page=%lu dontneed=%d api=%d api_errno=%d stage=api-without-poison errno=%d\n",
                   page, dontneed, api_ret, api_errno, errno);
            return;
        }
    }
    memset(&reg, 0, sizeof reg);
    reg.range.start = (unsigned long)base;
    reg.range.len = pages * PAGE;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    reg_ret = ioctl(uffd, UFFDIO_REGISTER, &reg);
    reg_errno = reg_ret ? errno : 0;
    memset(&poison_request, 0, sizeof poison_request);
    poison_request.range.start = (unsigned long)addr;
    poison_request.range.len = PAGE;
    ret = ioctl(uffd, UFFDIO_POISON, &poison_request);
    err = ret ? errno : 0;
    printf("POISON page=%lu dontneed=%d api=%d api_errno=%d api_features=0x%llx api_poison=%d register=%d "
           "register_errno=%d register_ioctls=0x%llx ret=%d errno=%d updated=%lld\n", page, dontneed, api_ret,
           api_errno, (unsigned long long)request.features, poisoned, reg_ret, reg_errno,
           (unsigned long long)reg.ioctls, ret, err, (long long)poison_request.updated);
}

static void release(void) {
    struct uffdio_range range;
    int ret, err, closed;
    if (uffd < 0) {
        printf("RELEASE unregister=-1 errno=%d close=-1\n", EBADF);
        return;
    }
    range.start = (unsigned long)base;
    range.len = pages * PAGE;
    ret = ioctl(uffd, UFFDIO_UNREGISTER, &range);
    err = ret ? errno : 0;
    closed = close(uffd);
    uffd = -1;
    printf("RELEASE unregister=%d errno=%d close=%d\n", ret, err, closed);
}

static int pagemap_raw(unsigned long page, uint64_t *raw) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = pread(fd, raw, sizeof *raw, (off_t)(((unsigned long)base / PAGE + page) * sizeof *raw));
    close(fd);
    return n == (ssize_t)sizeof *raw ? 0 : -1;
}

static void show_pagemap(unsigned long page) {
    uint64_t raw = 0;
    if (pagemap_raw(page, &raw))
        printf("%sPAGEMAP page=%lu error errno=%d\n", prefix, page, errno);
    else
        printf("%sPAGEMAP page=%lu vaddr=%p raw=0x%016llx\n", prefix, page, (void *)(base + page * PAGE),
               (unsigned long long)raw);
}

static void read_page(unsigned long page) {
    if (sigsetjmp(guarded_jump, 1) == 0) {
        unsigned value;
        guarded = 1;
        value = *(volatile unsigned char *)(base + page * PAGE);
        guarded = 0;
        printf("%sREAD page=%lu value=%u\n", prefix, page, value);
    } else {
        guarded = 0;
        printf("%sREAD page=%lu sigbus\n", prefix, page);
    }
}

/* bytes of page that hold its pattern; -1 when reading it raised SIGBUS */
static long good_bytes(unsigned long page) {
    volatile unsigned char *addr = base + page * PAGE;
    long good = 0;
    if (sigsetjmp(guarded_jump, 1) != 0) {
        guarded = 0;
        return -1;
    }
    guarded = 1;
    for (unsigned long i = 0; i < PAGE; i++)
        good += addr[i] == pattern(page);
    guarded = 0;
    return good;
}

static void check(unsigned long page) {
    long good = good_bytes(page);
    if (good < 0)
        printf("%sCHECK page=%lu sigbus\n", prefix, page);
    else
        printf("%sCHECK page=%lu good=%ld bad=%ld\n", prefix, page, good, (long)PAGE - good);
}

static void check_all(unsigned long skip) {
    unsigned long good_pages = 0, bad_pages = 0;
    for (unsigned long page = 0; page < pages; page++) {
        if (page == skip)
            continue;
        if (good_bytes(page) == (long)PAGE)
            good_pages++;
        else
            bad_pages++;
    }
    printf("CHECKALL skip=%lu pages=%lu good_pages=%lu bad_pages=%lu\n", skip, pages, good_pages, bad_pages);
}

static void fork_child(unsigned long page) {
    pid_t child;
    int status = 0;
    fflush(stdout);
    child = fork();
    if (child < 0) {
        printf("FORK error errno=%d\n", errno);
        return;
    }
    if (child == 0) {
        prefix = "CHILD ";
        show_pagemap(page);
        read_page(page);
        if (page + 1 < pages)
            check(page + 1);
        fflush(stdout);
        _exit(0);
    }
    waitpid(child, &status, 0);
    if (WIFSIGNALED(status))
        printf("FORK child=%d status=signal:%d\n", (int)child, WTERMSIG(status));
    else
        printf("FORK child=%d status=exit:%d\n", (int)child, WEXITSTATUS(status));
}

int main(int argc, char **argv) {
    struct sigaction action;
    char line[128];

    pages = argc > 1 ? strtoul(argv[1], NULL, 0) : 64;
    if (pages < 2)
        pages = 2;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigaction(SIGBUS, &action, NULL);

    base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(base, pages * PAGE, MADV_NOHUGEPAGE);
    for (unsigned long i = 0; i < pages; i++)
        memset(base + i * PAGE, pattern(i), PAGE);

    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d base=%p pages=%lu\n", (int)getpid(), (void *)base, pages);

    while (fgets(line, sizeof line, stdin)) {
        char command[16];
        unsigned long long arg = 0;
        int fields = sscanf(line, "%15s %lli", command, &arg);
        if (fields < 1)
            continue;
        if (!strcmp(command, "api")) {
            api(arg);
            continue;
        }
        if (!strcmp(command, "release")) {
            release();
            continue;
        }
        if (!strcmp(command, "ping")) {
            printf("PONG\n");
            continue;
        }
        if (!strcmp(command, "quit"))
            break;
        if (arg >= pages) {
            printf("ERROR page=%llu out of range\n", arg);
            continue;
        }
        if (!strcmp(command, "poison"))
            poison((unsigned long)arg);
        else if (!strcmp(command, "pagemap"))
            show_pagemap((unsigned long)arg);
        else if (!strcmp(command, "read"))
            read_page((unsigned long)arg);
        else if (!strcmp(command, "check"))
            check((unsigned long)arg);
        else if (!strcmp(command, "checkall"))
            check_all((unsigned long)arg);
        else if (!strcmp(command, "fork"))
            fork_child((unsigned long)arg);
        else
            printf("ERROR unknown command %s\n", command);
    }
    printf("BYE\n");
    return 0;
}
