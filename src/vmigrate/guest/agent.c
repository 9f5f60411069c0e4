/*
 * vmigrate guest agent: the service a migration must keep alive, plus the test hooks that
 * measure it.  One static process (gcc -static -O2 -Wall -Wextra -pthread), started by the
 * initramfs /init with options taken from the kernel command line.
 *
 *   HTTP/1.1   --http-port (80)      GET / -> JSON {boot_id, uptime_ms, requests}; epoll,
 *                                    non-blocking, keep-alive, pipelining, Connection: close.
 *   UDP echo   --echo-port (7)       every datagram goes back to its sender unchanged (the
 *                                    downtime probe sends one per millisecond).
 *   control    --control-port (7000) line protocol, one reply line per command:
 *                                    ping | checksum | verify | diskverify | status.
 *   integrity  --integrity-mib (32)  region filled once with xorshift64 output seeded per
 *                                    boot, never written again: its FNV-1a 64 must survive a
 *                                    live migration (and changes if the guest rebooted).
 *   disk       if /dev/vda exists: a 4 MiB region written with a known pattern at start, then
 *              one 4 KiB block every 50 ms (O_DIRECT|O_DSYNC), each block's generation kept
 *              in memory; `diskverify` reads every block back from the device and counts the
 *              blocks that differ (a write the migration of the disk lost).
 *   workload   --workload idle|web|memory, --working-set-mib, --dirty-rate-mib-s: the memory
 *                                    workload dirties pages at a fixed rate (tick 10 ms).
 *                                    Each write also goes to a ledger on other pages; `verify`
 *                                    compares both, so an update a migration lost shows up.
 *
 * When every listener is up it prints "VMIGRATE-AGENT-READY boot_id=<id>" on stdout (the
 * serial console).  Errors go to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE_BYTES 4096UL
#define MIB (1024UL * 1024UL)
#define TICK_NS 10000000L /* memory workload tick: 10 ms */
#define HTTP_IN_MAX 16384
#define CONTROL_LINE_MAX 512

struct options {
    int http_port;
    int control_port;
    int echo_port;
    char workload[16];
    unsigned long working_set_mib;
    double dirty_rate_mib_s;
    unsigned long integrity_mib;
};

static struct options opt = {80, 7000, 7, "idle", 64, 0.0, 32};
static char boot_id[64] = "unknown";
static unsigned char *integrity;
static size_t integrity_bytes;
static uint64_t http_requests;  /* atomic: __atomic builtins */
static uint64_t dirtied_bytes;  /* atomic */
static uint64_t touched_bytes;  /* atomic: working set pages touched at start */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void warnmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vmigrate-agent: fatal: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void warnmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vmigrate-agent: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t now_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ options */

static long parse_long(const char *name, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi)
        die("--%s: expected an integer in [%ld, %ld], got '%s'", name, lo, hi, s);
    return v;
}

static void parse_options(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"http-port", required_argument, NULL, 'h'},
        {"control-port", required_argument, NULL, 'c'},
        {"echo-port", required_argument, NULL, 'e'},
        {"workload", required_argument, NULL, 'w'},
        {"working-set-mib", required_argument, NULL, 's'},
        {"dirty-rate-mib-s", required_argument, NULL, 'r'},
        {"integrity-mib", required_argument, NULL, 'i'},
        {NULL, 0, NULL, 0},
    };
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': opt.http_port = (int)parse_long("http-port", optarg, 1, 65535); break;
        case 'c': opt.control_port = (int)parse_long("control-port", optarg, 1, 65535); break;
        case 'e': opt.echo_port = (int)parse_long("echo-port", optarg, 1, 65535); break;
        case 'w':
            if (strcmp(optarg, "idle") && strcmp(optarg, "web") && strcmp(optarg, "memory"))
                die("--workload: expected idle, web or memory, got '%s'", optarg);
            snprintf(opt.workload, sizeof opt.workload, "%s", optarg);
            break;
        case 's':
            opt.working_set_mib = (unsigned long)parse_long("working-set-mib", optarg, 0, 1 << 20);
            break;
        case 'r':
            errno = 0;
            opt.dirty_rate_mib_s = strtod(optarg, &end);
            if (errno || *optarg == '\0' || *end != '\0' || opt.dirty_rate_mib_s < 0 ||
                opt.dirty_rate_mib_s > 1e6)
                die("--dirty-rate-mib-s: expected a number >= 0, got '%s'", optarg);
            break;
        case 'i':
            opt.integrity_mib = (unsigned long)parse_long("integrity-mib", optarg, 0, 1 << 20);
            break;
        default: die("usage: vmigrate-agent [--http-port N] [--control-port N] [--echo-port N] "
                     "[--workload idle|web|memory] [--working-set-mib N] "
                     "[--dirty-rate-mib-s R] [--integrity-mib N]");
        }
    }
    if (optind < argc)
        die("unexpected argument '%s'", argv[optind]);
}

static void read_boot_id(void)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f) {
        warnmsg("cannot read boot_id: %s", strerror(errno));
        return;
    }
    if (fgets(boot_id, sizeof boot_id, f))
        boot_id[strcspn(boot_id, "\r\n")] = '\0';
    fclose(f);
}

/* ---------------------------------------------------------------- integrity */

static void integrity_fill(void)
{
    integrity_bytes = opt.integrity_mib * MIB;
    if (integrity_bytes == 0)
        return;
    integrity = malloc(integrity_bytes);
    if (!integrity)
        die("cannot allocate %lu MiB integrity region", opt.integrity_mib);
    /* Seeded from the boot id: a rebooted guest has a different checksum. */
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (const char *c = boot_id; *c; c++)
        x = (x ^ (unsigned char)*c) * 0x100000001b3ULL;
    if (x == 0)
        x = 1;
    for (size_t off = 0; off < integrity_bytes; off += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(integrity + off, &x, 8);
    }
}

static uint64_t integrity_checksum(void)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 offset basis */
    for (size_t i = 0; i < integrity_bytes; i++) {
        h ^= integrity[i];
        h *= 0x100000001b3ULL; /* FNV-1a 64 prime */
    }
    return h;
}

/* ---------------------------------------------------------- memory workload */

/* The working set and its ledger: ledger[p] is the value last written into page p. */
static pthread_mutex_t ws_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *ws_pages;
static uint64_t *ws_ledger;
static size_t ws_npages; /* set under ws_lock once the working set is touched */

static void ws_write(size_t page, uint64_t value)
{
    memcpy(ws_pages + page * PAGE_SIZE_BYTES, &value, 8);
    ws_ledger[page] = value;
}

/* Pages whose content disagrees with the ledger: updates lost by a migration. */
static size_t ws_verify(size_t *checked)
{
    size_t bad = 0;
    pthread_mutex_lock(&ws_lock);
    for (size_t p = 0; p < ws_npages; p++) {
        uint64_t value;
        memcpy(&value, ws_pages + p * PAGE_SIZE_BYTES, 8);
        if (value != ws_ledger[p])
            bad++;
    }
    *checked = ws_npages;
    pthread_mutex_unlock(&ws_lock);
    return bad;
}

static void *memory_workload(void *arg)
{
    (void)arg;
    size_t ws_bytes = opt.working_set_mib * MIB;
    size_t npages = ws_bytes / PAGE_SIZE_BYTES;
    if (npages == 0)
        return NULL;
    unsigned char *ws = mmap(NULL, ws_bytes, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ws == MAP_FAILED) {
        warnmsg("memory workload: cannot map %lu MiB: %s", opt.working_set_mib, strerror(errno));
        return NULL;
    }
    uint64_t *ledger = calloc(npages, sizeof *ledger);
    if (!ledger) {
        warnmsg("memory workload: cannot allocate the ledger");
        return NULL;
    }
    uint64_t counter = 1;
    pthread_mutex_lock(&ws_lock);
    ws_pages = ws;
    ws_ledger = ledger;
    for (size_t p = 0; p < npages; p++) { /* non-zero so QEMU cannot skip them as zero pages */
        ws_write(p, counter);
        __atomic_add_fetch(&touched_bytes, PAGE_SIZE_BYTES, __ATOMIC_RELAXED);
    }
    ws_npages = npages;
    pthread_mutex_unlock(&ws_lock);
    if (opt.dirty_rate_mib_s <= 0)
        return NULL;
    double bytes_per_tick = opt.dirty_rate_mib_s * (double)MIB * ((double)TICK_NS / 1e9);
    double owed = 0.0;
    size_t next = 0;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    for (;;) {
        deadline.tv_nsec += TICK_NS;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
        /* Dirtying needs CPU time: ticks missed while the vCPU could not run (paused for the
         * migration, or throttled by auto-converge) are skipped, never made up in a burst. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t late_ns = (int64_t)(now.tv_sec - deadline.tv_sec) * 1000000000LL +
                          (now.tv_nsec - deadline.tv_nsec);
        if (late_ns > 2 * TICK_NS) /* the vCPU was held back (paused, throttled): the */
            deadline = now;           /* work of the missed ticks is not made up for   */
        owed += bytes_per_tick;
        size_t pages = (size_t)(owed / (double)PAGE_SIZE_BYTES);
        owed -= (double)pages * (double)PAGE_SIZE_BYTES;
        pthread_mutex_lock(&ws_lock);
        for (size_t i = 0; i < pages; i++) {
            ws_write(next, ++counter);
            if (++next == npages)
                next = 0;
        }
        pthread_mutex_unlock(&ws_lock);
        __atomic_add_fetch(&dirtied_bytes, (uint64_t)pages * PAGE_SIZE_BYTES, __ATOMIC_RELAXED);
    }
    return NULL;
}

/* ------------------------------------------------------------------ disk */

#define DISK_DEVICE "/dev/vda"
#define DISK_BLOCK 4096UL
#define DISK_BLOCKS 1024UL     /* a 4 MiB region at the start of the disk */
#define DISK_TICK_NS 50000000L /* one block rewritten every 50 ms */

static pthread_mutex_t disk_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t disk_generation[DISK_BLOCKS]; /* 0: never written */
static int disk_fd = -1;
static uint64_t disk_blocks_written; /* atomic */

/* The content of block `index` at generation `gen`: a header, then a fill derived from both. */
static void disk_pattern(unsigned char *buf, size_t index, uint32_t gen)
{
    uint64_t x = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)index << 32) ^ gen;
    for (size_t off = 0; off < DISK_BLOCK; off += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + off, &x, 8);
    }
    memcpy(buf, &index, sizeof index);
    memcpy(buf + 8, &gen, sizeof gen);
}

static int disk_write(unsigned char *buf, size_t index, uint32_t gen)
{
    disk_pattern(buf, index, gen);
    if (pwrite(disk_fd, buf, DISK_BLOCK, (off_t)(index * DISK_BLOCK)) != (ssize_t)DISK_BLOCK)
        return -1;
    disk_generation[index] = gen;
    __atomic_add_fetch(&disk_blocks_written, 1, __ATOMIC_RELAXED);
    return 0;
}

static void *disk_workload(void *arg)
{
    (void)arg;
    unsigned char *buf = aligned_alloc(DISK_BLOCK, DISK_BLOCK);
    if (!buf)
        return NULL;
    pthread_mutex_lock(&disk_lock);
    for (size_t i = 0; i < DISK_BLOCKS; i++) {
        if (disk_write(buf, i, 1) < 0) {
            warnmsg("disk: write %s: %s", DISK_DEVICE, strerror(errno));
            pthread_mutex_unlock(&disk_lock);
            return NULL;
        }
    }
    pthread_mutex_unlock(&disk_lock);
    size_t next = 0;
    for (;;) {
        struct timespec tick = {0, DISK_TICK_NS};
        nanosleep(&tick, NULL);
        pthread_mutex_lock(&disk_lock);
        if (disk_write(buf, next, disk_generation[next] + 1) < 0)
            warnmsg("disk: write: %s", strerror(errno));
        pthread_mutex_unlock(&disk_lock);
        next = (next + 1) % DISK_BLOCKS;
    }
    return NULL;
}

/* Blocks whose content on the device is not what was last written there. */
static size_t disk_verify(size_t *checked)
{
    static unsigned char *want, *got;
    size_t bad = 0;
    *checked = 0;
    if (disk_fd < 0)
        return 0;
    if (!want)
        want = aligned_alloc(DISK_BLOCK, DISK_BLOCK);
    if (!got)
        got = aligned_alloc(DISK_BLOCK, DISK_BLOCK);
    pthread_mutex_lock(&disk_lock);
    for (size_t i = 0; i < DISK_BLOCKS; i++) {
        if (disk_generation[i] == 0)
            continue;
        disk_pattern(want, i, disk_generation[i]);
        if (pread(disk_fd, got, DISK_BLOCK, (off_t)(i * DISK_BLOCK)) != (ssize_t)DISK_BLOCK ||
            memcmp(want, got, DISK_BLOCK) != 0)
            bad++;
        (*checked)++;
    }
    pthread_mutex_unlock(&disk_lock);
    return bad;
}

/* -------------------------------------------------------------- sockets */

static int listen_socket(int type, int port, int flags)
{
    int fd = socket(AF_INET, type | flags | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind port %d: %s", port, strerror(errno));
    if (type == SOCK_STREAM && listen(fd, 1024) < 0)
        die("listen port %d: %s", port, strerror(errno));
    return fd;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---------------------------------------------------------------- UDP echo */

static void *udp_echo(void *arg)
{
    int fd = *(int *)arg;
    unsigned char buf[65536];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) {
            if (errno != EINTR)
                warnmsg("udp echo: recvfrom: %s", strerror(errno));
            continue;
        }
        if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen) < 0 && errno != EINTR)
            warnmsg("udp echo: sendto: %s", strerror(errno));
    }
    return NULL;
}

/* ----------------------------------------------------------------- control */

static void control_reply(const char *cmd, char *out, size_t outlen)
{
    if (strcmp(cmd, "ping") == 0) {
        snprintf(out, outlen, "pong\n");
    } else if (strcmp(cmd, "checksum") == 0) {
        snprintf(out, outlen, "checksum fnv1a64=%016llx bytes=%zu\n",
                 (unsigned long long)integrity_checksum(), integrity_bytes);
    } else if (strcmp(cmd, "diskverify") == 0) {
        size_t checked = 0;
        size_t bad = disk_verify(&checked);
        snprintf(out, outlen, "diskverify blocks=%zu mismatches=%zu\n", checked, bad);
    } else if (strcmp(cmd, "verify") == 0) {
        size_t checked = 0;
        size_t bad = ws_verify(&checked);
        snprintf(out, outlen, "verify pages=%zu mismatches=%zu\n", checked, bad);
    } else if (strcmp(cmd, "status") == 0) {
        snprintf(out, outlen,
                 "{\"boot_id\":\"%s\",\"workload\":\"%s\",\"working_set_mib\":%lu,"
                 "\"dirty_rate_mib_s\":%g,\"dirtied_bytes\":%llu,\"integrity_mib\":%lu,"
                 "\"touched_bytes\":%llu,\"uptime_ms\":%llu,\"requests\":%llu}\n",
                 boot_id, opt.workload, opt.working_set_mib, opt.dirty_rate_mib_s,
                 (unsigned long long)__atomic_load_n(&dirtied_bytes, __ATOMIC_RELAXED),
                 opt.integrity_mib,
                 (unsigned long long)__atomic_load_n(&touched_bytes, __ATOMIC_RELAXED),
                 (unsigned long long)(now_ns(CLOCK_BOOTTIME) / 1000000ULL),
                 (unsigned long long)__atomic_load_n(&http_requests, __ATOMIC_RELAXED));
    } else {
        snprintf(out, outlen, "error unknown command\n");
    }
}

static void *control_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[CONTROL_LINE_MAX];
    size_t len = 0;
    int discarding = 0; /* inside an over-long line */
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        char *start = buf, *nl;
        while ((nl = memchr(start, '\n', len - (size_t)(start - buf))) != NULL) {
            *nl = '\0';
            if (nl > start && nl[-1] == '\r')
                nl[-1] = '\0';
            char out[1024];
            if (discarding) {
                snprintf(out, sizeof out, "error line too long\n");
                discarding = 0;
            } else {
                control_reply(start, out, sizeof out);
            }
            if (write_all(fd, out, strlen(out)) < 0)
                goto done;
            start = nl + 1;
        }
        len -= (size_t)(start - buf);
        memmove(buf, start, len);
        if (len == sizeof buf) { /* no newline in a full buffer: drop it, answer at its end */
            discarding = 1;
            len = 0;
        }
    }
done:
    close(fd);
    return NULL;
}

static void *control_server(void *arg)
{
    int lfd = *(int *)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED)
                warnmsg("control: accept: %s", strerror(errno));
            if (errno == EMFILE || errno == ENFILE)
                usleep(10000);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &attr, control_conn, (void *)(intptr_t)fd) != 0) {
            warnmsg("control: cannot start a thread");
            close(fd);
        }
    }
    return NULL;
}

/* -------------------------------------------------------------------- HTTP */

struct conn {
    int fd;
    int close_after;     /* close once the output is flushed */
    int want_out;        /* EPOLLOUT currently requested */
    size_t body_skip;    /* request body bytes still to discard */
    size_t inlen;
    char in[HTTP_IN_MAX];
    char *out;
    size_t outlen, outoff, outcap;
};

static int listener_tag; /* epoll data.ptr of the listening socket */

static void out_append(struct conn *c, const char *s, size_t n)
{
    if (c->outlen + n > c->outcap) {
        size_t cap = c->outcap ? c->outcap : 1024;
        while (cap < c->outlen + n)
            cap *= 2;
        char *p = realloc(c->out, cap);
        if (!p)
            die("out of memory");
        c->out = p;
        c->outcap = cap;
    }
    memcpy(c->out + c->outlen, s, n);
    c->outlen += n;
}

static void http_respond(struct conn *c, int status, const char *reason, const char *ctype,
                         const char *body, int head_only)
{
    char hdr[512];
    size_t blen = strlen(body);
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%s\r\n",
                     status, reason, ctype, blen, c->close_after ? "Connection: close\r\n" : "");
    out_append(c, hdr, (size_t)n);
    if (!head_only)
        out_append(c, body, blen);
}

/* Case-insensitive search for a header line; returns a pointer to its value or NULL. */
static const char *header_value(const char *hdrs, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = hdrs;
    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            *vlen = e ? (size_t)(e - v) : strlen(v);
            return v;
        }
    }
    return NULL;
}

static int value_has_token(const char *v, size_t vlen, const char *token)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i + tlen <= vlen; i++)
        if (strncasecmp(v + i, token, tlen) == 0)
            return 1;
    return 0;
}

/* Handle one complete request head (NUL-terminated, ends with "\r\n\r\n"). */
static void http_handle(struct conn *c, char *head)
{
    char method[16], target[256], version[16];
    if (sscanf(head, "%15s %255s %15s", method, target, version) != 3 ||
        strncmp(version, "HTTP/1.", 7) != 0) {
        c->close_after = 1;
        http_respond(c, 400, "Bad Request", "text/plain", "bad request\n", 0);
        return;
    }
    size_t vlen;
    const char *v = header_value(head, "Connection", &vlen);
    if (strcmp(version, "HTTP/1.0") == 0)
        c->close_after = !(v && value_has_token(v, vlen, "keep-alive"));
    else if (v && value_has_token(v, vlen, "close"))
        c->close_after = 1;
    v = header_value(head, "Content-Length", &vlen);
    if (v)
        c->body_skip = (size_t)strtoull(v, NULL, 10);
    uint64_t count = __atomic_add_fetch(&http_requests, 1, __ATOMIC_RELAXED);
    int head_only = strcmp(method, "HEAD") == 0;
    if (strcmp(method, "GET") != 0 && !head_only) {
        http_respond(c, 405, "Method Not Allowed", "text/plain", "method not allowed\n", 0);
        return;
    }
    if (strcmp(target, "/") != 0 && strncmp(target, "/?", 2) != 0) {
        http_respond(c, 404, "Not Found", "text/plain", "not found\n", head_only);
        return;
    }
    char body[256];
    snprintf(body, sizeof body, "{\"boot_id\":\"%s\",\"uptime_ms\":%llu,\"requests\":%llu}",
             boot_id, (unsigned long long)(now_ns(CLOCK_BOOTTIME) / 1000000ULL),
             (unsigned long long)count);
    http_respond(c, 200, "OK", "application/json", body, head_only);
}

static void conn_close(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

/* Write what we can; returns -1 when the connection should be closed now. */
static int conn_flush(int ep, struct conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        c->outoff += (size_t)n;
    }
    if (c->outoff == c->outlen) {
        c->outoff = c->outlen = 0;
        if (c->close_after)
            return -1;
    }
    int want = c->outlen > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u),
                                 .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

/* Parse every complete request in the input buffer. */
static void conn_process(struct conn *c)
{
    size_t pos = 0;
    while (!c->close_after) {
        if (c->body_skip > 0) {
            size_t k = c->inlen - pos < c->body_skip ? c->inlen - pos : c->body_skip;
            pos += k;
            c->body_skip -= k;
            if (c->body_skip > 0)
                break;
        }
        char *start = c->in + pos;
        size_t avail = c->inlen - pos;
        char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (!end)
            break;
        end[2] = '\0'; /* keep the last header's CRLF for header_value() */
        http_handle(c, start);
        pos = (size_t)(end - c->in) + 4;
    }
    memmove(c->in, c->in + pos, c->inlen - pos);
    c->inlen -= pos;
    if (c->inlen == sizeof c->in && !c->close_after) { /* head larger than our buffer */
        c->close_after = 1;
        c->inlen = 0;
        http_respond(c, 431, "Request Header Fields Too Large", "text/plain", "too large\n", 0);
    }
}

static void conn_readable(int ep, struct conn *c)
{
    for (;;) {
        if (c->close_after) { /* ignore anything after a closing request */
            char sink[4096];
            ssize_t n = recv(c->fd, sink, sizeof sink, 0);
            if (n > 0 || (n < 0 && errno == EINTR))
                continue;
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                conn_close(ep, c);
                return;
            }
            break;
        }
        ssize_t n = recv(c->fd, c->in + c->inlen, sizeof c->in - c->inlen, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(ep, c);
            return;
        }
        if (n == 0) { /* peer finished: answer what it sent, then close */
            conn_process(c);
            c->close_after = 1;
            if (conn_flush(ep, c) < 0)
                conn_close(ep, c);
            return;
        }
        c->inlen += (size_t)n;
        conn_process(c);
    }
    if (conn_flush(ep, c) < 0)
        conn_close(ep, c);
}

static void http_accept(int ep, int lfd)
{
    static int emfile_logged;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && !emfile_logged) {
                warnmsg("http: accept: %s", strerror(errno));
                emfile_logged = 1;
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            die("out of memory");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            warnmsg("http: epoll_ctl: %s", strerror(errno));
            close(fd);
            free(c);
        }
    }
}

static void http_loop(int lfd)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listener_tag) {
                http_accept(ep, lfd);
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                conn_readable(ep, c); /* may free c */
                continue;
            }
            if ((e & EPOLLOUT) && conn_flush(ep, c) < 0)
                conn_close(ep, c);
        }
    }
}

/* -------------------------------------------------------------------- main */

static void start_thread(void *(*fn)(void *), void *arg, const char *what)
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg) != 0)
        die("cannot start the %s thread", what);
    pthread_detach(t);
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl = {65536, 65536}; /* many keep-alive clients; keep the hard cap if lower */
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    read_boot_id();
    integrity_fill();

    int http_fd = listen_socket(SOCK_STREAM, opt.http_port, SOCK_NONBLOCK);
    static int control_fd, echo_fd;
    control_fd = listen_socket(SOCK_STREAM, opt.control_port, 0);
    echo_fd = listen_socket(SOCK_DGRAM, opt.echo_port, 0);

    start_thread(udp_echo, &echo_fd, "udp echo");
    start_thread(control_server, &control_fd, "control");
    if (strcmp(opt.workload, "memory") == 0)
        start_thread(memory_workload, NULL, "memory workload");
    disk_fd = open(DISK_DEVICE, O_RDWR | O_DIRECT | O_DSYNC | O_CLOEXEC);
    if (disk_fd >= 0)
        start_thread(disk_workload, NULL, "disk workload");

    printf("VMIGRATE-AGENT-READY boot_id=%s\n", boot_id);
    fflush(stdout);
    http_loop(http_fd);
    return 0;
}
