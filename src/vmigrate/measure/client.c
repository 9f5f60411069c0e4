/*
 * vmigrate-client: the client host's two meters, run from the client namespace against the guest.
 *
 *   probe  UDP echo downtime probe: one datagram every --interval-us, paced on absolute
 *          CLOCK_MONOTONIC deadlines (clock_nanosleep TIMER_ABSTIME).  After a stall longer
 *          than one interval the missed slots are skipped, never sent in a burst; `seq` counts
 *          the probes actually sent.  Each wake-up first collects the echoes that arrived
 *          (matched by seq; receive time = the kernel's receive timestamp), then sends: one
 *          wake-up per probe.  CSV: seq,send_ns,recv_ns (recv_ns empty when no reply came).
 *
 *   load   open-loop HTTP/1.1 load (like wrk2): request i is intended at start + i/rate and
 *          goes out then on an idle keep-alive connection, or on a new one (up to
 *          --max-conns), or waits in a FIFO queue; its latency counts from the intended time
 *          either way (no coordinated omission).  One thread, epoll, non-blocking sockets.
 *          CSV: intended_ns,sent_ns,done_ns,status,error with error one of "" (a complete
 *          response), timeout (none within --timeout-ms of the intended time; the connection
 *          is closed), connect (the connection could not be made) or io (reset or EOF before
 *          the response was complete); sent_ns/done_ns empty when it did not happen.
 *
 * Both print "READY" on stdout once running, stop on SIGTERM/SIGINT or after --duration-s
 * (0: until signalled), let the last answers arrive (probe: 300 ms; load: up to --timeout-ms,
 * a second signal cuts that short), then write FILE.tmp and rename it to --out FILE.
 * Every time is CLOCK_MONOTONIC in ns, the clock of Python's time.monotonic_ns().
 * Exit: 0 done, 1 runtime failure, 2 usage.
 *
 * Build: gcc -O2 -Wall -Wextra -o vmigrate-client client.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000LL
#define NS_PER_MS 1000000LL
#define PROBE_LINGER_NS (300 * NS_PER_MS) /* wait this long for late echoes after stopping */
#define PROBE_MAGIC 0x766d6763u          /* "vmgc" */
#define HEAD_MAX 65536                    /* largest response head we accept */

/* ------------------------------------------------------------------ common */

struct options {
    const char *mode;
    const char *target;
    int port;
    const char *out;
    double duration_s;
    long interval_us;
    double rate_rps;
    long timeout_ms;
    long max_conns;
    const char *path;
    int icmp; /* probe with ICMP echo (answered by the guest's kernel) instead of UDP */
};

static struct options opt = {
    .port = -1, .interval_us = 1000, .timeout_ms = 2000, .max_conns = 256, .path = "/",
};
static struct sockaddr_storage target_addr;
static socklen_t target_len;
static volatile sig_atomic_t stop_signals; /* SIGTERM/SIGINT received so far */

static void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void warnmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vmigrate-client: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static void warnmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vmigrate-client: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static struct timespec ns_to_timespec(int64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / NS_PER_S), .tv_nsec = (long)(ns % NS_PER_S)};
    return ts;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q)
        die(1, "out of memory (%zu bytes)", n);
    return q;
}

static void on_signal(int sig)
{
    (void)sig;
    stop_signals++;
}

/* SIGTERM/SIGINT count into stop_signals and interrupt sleeps (no SA_RESTART). */
static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static void usage(void) __attribute__((noreturn));
static void usage(void)
{
    fputs("usage: vmigrate-client probe --target IP --out FILE [--port 7] [--interval-us 1000]\n"
          "                             [--duration-s N] [--icmp]\n"
          "       vmigrate-client load --target IP --rate RPS --out FILE [--port 80]\n"
          "                            [--duration-s N] [--timeout-ms 2000] [--max-conns 256]\n"
          "                            [--path /]\n"
          "Prints READY when running; stops on SIGTERM/SIGINT or after --duration-s (0: never);\n"
          "then writes the CSV records to FILE.\n",
          stderr);
    exit(2);
}

static long parse_long(const char *name, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi)
        die(2, "--%s: expected an integer in [%ld, %ld], got '%s'", name, lo, hi, s);
    return v;
}

static double parse_double(const char *name, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || !(v >= lo && v <= hi))
        die(2, "--%s: expected a number in [%g, %g], got '%s'", name, lo, hi, s);
    return v;
}

static void parse_options(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"target", required_argument, NULL, 't'},
        {"port", required_argument, NULL, 'p'},
        {"out", required_argument, NULL, 'o'},
        {"duration-s", required_argument, NULL, 'd'},
        {"interval-us", required_argument, NULL, 'i'},
        {"rate", required_argument, NULL, 'r'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"max-conns", required_argument, NULL, 'c'},
        {"path", required_argument, NULL, 'P'},
        {"icmp", no_argument, NULL, 'I'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    if (argc < 2 || argv[1][0] == '-')
        usage();
    opt.mode = argv[1];
    int is_probe = strcmp(opt.mode, "probe") == 0, is_load = strcmp(opt.mode, "load") == 0;
    if (!is_probe && !is_load)
        die(2, "unknown mode '%s' (expected probe or load)", opt.mode);
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 't': opt.target = optarg; break;
        case 'p': opt.port = (int)parse_long("port", optarg, 1, 65535); break;
        case 'o': opt.out = optarg; break;
        case 'd': opt.duration_s = parse_double("duration-s", optarg, 0, 1e7); break;
        case 'i': opt.interval_us = parse_long("interval-us", optarg, 10, 60L * 1000 * 1000); break;
        case 'r': opt.rate_rps = parse_double("rate", optarg, 0.001, 1e6); break;
        case 'T': opt.timeout_ms = parse_long("timeout-ms", optarg, 1, 3600L * 1000); break;
        case 'c': opt.max_conns = parse_long("max-conns", optarg, 1, 60000); break;
        case 'P':
            if (optarg[0] != '/' || strpbrk(optarg, " \r\n"))
                die(2, "--path: expected an absolute path without spaces, got '%s'", optarg);
            opt.path = optarg;
            break;
        case 'I': opt.icmp = 1; break;
        default: usage();
        }
    }
    if (optind < argc)
        die(2, "unexpected argument '%s'", argv[optind]);
    if (!opt.target || !opt.out)
        die(2, "%s: --target and --out are required", opt.mode);
    if (is_load && opt.rate_rps <= 0)
        die(2, "load: --rate is required");
    if (opt.port < 0)
        opt.port = is_probe ? 7 : 80;

    struct addrinfo hints, *res;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = is_probe ? SOCK_DGRAM : SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", opt.port);
    if (getaddrinfo(opt.target, port, &hints, &res) != 0 || !res)
        die(2, "--target: expected an IP address, got '%s'", opt.target);
    memcpy(&target_addr, res->ai_addr, res->ai_addrlen);
    target_len = res->ai_addrlen;
    freeaddrinfo(res);
}

static void say_ready(void)
{
    fputs("READY\n", stdout);
    fflush(stdout);
}

/* Buffered CSV output to FILE.tmp, renamed to FILE when complete. */
struct csv {
    FILE *f;
    char tmp[4096];
};

static void csv_open(struct csv *w, const char *header)
{
    if (snprintf(w->tmp, sizeof w->tmp, "%s.tmp", opt.out) >= (int)sizeof w->tmp)
        die(1, "--out path too long");
    w->f = fopen(w->tmp, "w");
    if (!w->f)
        die(1, "cannot write %s: %s", w->tmp, strerror(errno));
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    fputs(header, w->f);
}

static void csv_close(struct csv *w)
{
    if (fflush(w->f) != 0 || ferror(w->f) || fclose(w->f) != 0)
        die(1, "cannot write %s: %s", w->tmp, strerror(errno));
    if (rename(w->tmp, opt.out) < 0)
        die(1, "cannot rename %s to %s: %s", w->tmp, opt.out, strerror(errno));
}

/* Append a non-negative integer (a negative one is an empty cell) and a separator. */
static inline char *put_i64(char *p, int64_t v, char sep)
{
    if (v >= 0) {
        char digits[24];
        int n = 0;
        do {
            digits[n++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        while (n)
            *p++ = digits[--n];
    }
    *p++ = sep;
    return p;
}

static int same_peer(const struct sockaddr_storage *a)
{
    if (a->ss_family != target_addr.ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)&target_addr;
        return (opt.icmp || x->sin_port == y->sin_port) && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)&target_addr;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

/* ------------------------------------------------------------------ probe */

/* One thread and one wake-up per probe: each wake first collects the echoes that came back
 * since the last one, then sends the next probe. An echo's receive time is the kernel's
 * receive timestamp (SO_TIMESTAMPNS), not the moment we read it, so reading late costs no
 * accuracy. That timestamp is CLOCK_REALTIME; it is moved to CLOCK_MONOTONIC with the offset
 * between the two clocks sampled right after the read (they differ only by clock steps). */

struct probe_rec {
    int64_t send_ns;
    int64_t recv_ns; /* -1 until the echo came back */
};

struct probe_msg {
    uint32_t magic;
    uint32_t nonce; /* per run: ignore echoes meant for another client */
    uint64_t seq;
    int64_t send_ns;
};

#define PROBE_BATCH 32

static struct probe_rec *probes;
static uint64_t probes_sent, probes_cap, probes_received;
static uint32_t probe_nonce;

/* ICMP mode: where the probe message starts in a raw IPv4 datagram that is an echo reply
 * with our identifier (SIZE_MAX for anything else). */
static size_t icmp_payload_offset(const unsigned char *pkt, size_t len)
{
    if (len < 20 || (pkt[0] >> 4) != 4)
        return SIZE_MAX;
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
    if (len < ihl + 8 || pkt[ihl] != 0 /* echo reply */ || pkt[ihl + 1] != 0)
        return SIZE_MAX;
    uint16_t id;
    memcpy(&id, pkt + ihl + 4, 2);
    if (id != htons((uint16_t)probe_nonce))
        return SIZE_MAX;
    return ihl + 8;
}

static uint16_t inet_checksum(const unsigned char *buf, size_t len)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(buf[i] << 8 | buf[i + 1]);
    if (len & 1)
        sum += (uint32_t)buf[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

/* Read every echo waiting on the socket; returns how many were matched. */
static unsigned probe_drain(int fd)
{
    static unsigned char data[PROBE_BATCH][128];
    static char control[PROBE_BATCH][CMSG_SPACE(sizeof(struct timespec)) + 64];
    static struct sockaddr_storage from[PROBE_BATCH];
    struct mmsghdr msgs[PROBE_BATCH];
    struct iovec iov[PROBE_BATCH];
    unsigned matched = 0;
    for (;;) {
        for (int i = 0; i < PROBE_BATCH; i++) {
            iov[i] = (struct iovec){.iov_base = data[i], .iov_len = sizeof data[i]};
            msgs[i].msg_hdr = (struct msghdr){
                .msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i],
                .msg_iovlen = 1, .msg_control = control[i], .msg_controllen = sizeof control[i]};
        }
        int n = recvmmsg(fd, msgs, PROBE_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNREFUSED)
                warnmsg("probe: recvmmsg: %s", strerror(errno));
            return matched;
        }
        int64_t m1 = mono_ns();
        struct timespec real;
        clock_gettime(CLOCK_REALTIME, &real);
        int64_t m2 = mono_ns();
        int64_t offset = (int64_t)real.tv_sec * NS_PER_S + real.tv_nsec - (m1 + (m2 - m1) / 2);
        for (int i = 0; i < n; i++) {
            struct probe_msg m;
            size_t at_payload = opt.icmp ? icmp_payload_offset(data[i], msgs[i].msg_len) : 0;
            if (at_payload == SIZE_MAX || msgs[i].msg_len != at_payload + sizeof m ||
                !same_peer((struct sockaddr_storage *)msgs[i].msg_hdr.msg_name))
                continue;
            memcpy(&m, data[i] + at_payload, sizeof m);
            if (m.magic != PROBE_MAGIC || m.nonce != probe_nonce || m.seq >= probes_sent)
                continue;
            struct probe_rec *r = &probes[m.seq];
            if (r->send_ns != m.send_ns || r->recv_ns >= 0)
                continue;
            int64_t at = m1;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm;
                 cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                    int64_t k = (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec - offset;
                    if (k >= r->send_ns && k <= m1) /* else a clock step: keep the read time */
                        at = k;
                }
            }
            r->recv_ns = at;
            probes_received++;
            matched++;
        }
        if (n < PROBE_BATCH)
            return matched;
    }
}

static int run_probe(void)
{
    if (opt.icmp && target_addr.ss_family != AF_INET)
        die(2, "probe: --icmp supports IPv4 targets only");
    int fd = opt.icmp ? socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP)
                      : socket(target_addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die(1, "socket: %s%s", strerror(errno), opt.icmp ? " (--icmp needs root)" : "");
    int one = 1, rcvbuf = 1 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0)
        warnmsg("probe: SO_TIMESTAMPNS: %s (receive times are read times)", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    probe_nonce = (uint32_t)(mono_ns() ^ ((int64_t)getpid() << 16));
    prctl(PR_SET_TIMERSLACK, 1000UL); /* 1 us instead of 50 us of wake-up slack */
    struct csv w;
    csv_open(&w, "seq,send_ns,recv_ns\n"); /* now: an unwritable --out fails before READY */

    say_ready();
    const int64_t interval = (int64_t)opt.interval_us * 1000;
    const int64_t start = mono_ns();
    const int64_t end = opt.duration_s > 0 ? start + (int64_t)(opt.duration_s * 1e9) : INT64_MAX;
    int64_t deadline = start;
    uint64_t skipped = 0, send_errors = 0;
    while (!stop_signals) {
        int64_t now = mono_ns();
        if (now < deadline) {
            struct timespec ts = ns_to_timespec(deadline);
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL); /* EINTR: re-check */
            continue;
        }
        if (now - deadline > interval) { /* a stall: resume on the current slot, no burst */
            int64_t missed = (now - deadline) / interval;
            deadline += missed * interval;
            skipped += (uint64_t)missed;
        }
        if (deadline >= end)
            break;
        probe_drain(fd);
        if (probes_sent == probes_cap) {
            probes_cap = probes_cap ? probes_cap * 2 : 65536;
            probes = xrealloc(probes, probes_cap * sizeof *probes);
        }
        struct probe_rec *r = &probes[probes_sent];
        struct probe_msg m = {.magic = PROBE_MAGIC, .nonce = probe_nonce, .seq = probes_sent};
        r->recv_ns = -1;
        r->send_ns = m.send_ns = mono_ns();
        probes_sent++;
        unsigned char packet[8 + sizeof m];
        const void *datagram = &m;
        size_t datagram_len = sizeof m;
        if (opt.icmp) { /* echo request: type 8, code 0, checksum, id = nonce, seq */
            uint16_t id = htons((uint16_t)probe_nonce), seq = htons((uint16_t)m.seq);
            memset(packet, 0, 8);
            packet[0] = 8;
            memcpy(packet + 4, &id, 2);
            memcpy(packet + 6, &seq, 2);
            memcpy(packet + 8, &m, sizeof m);
            uint16_t sum = inet_checksum(packet, sizeof packet);
            memcpy(packet + 2, &sum, 2);
            datagram = packet;
            datagram_len = sizeof packet;
        }
        if (sendto(fd, datagram, datagram_len, MSG_DONTWAIT, (struct sockaddr *)&target_addr,
                   target_len) < 0) {
            /* Counted as sent and lost: the slot was used, no echo can come back. */
            if (send_errors++ == 0)
                warnmsg("probe: sendto: %s", strerror(errno));
        }
        deadline += interval;
    }
    /* Late echoes: wait up to PROBE_LINGER_NS more (a second signal cuts it short). */
    const int64_t linger_end = mono_ns() + PROBE_LINGER_NS;
    const int signals_at_stop = stop_signals;
    for (;;) {
        probe_drain(fd);
        int64_t left = linger_end - mono_ns();
        if (probes_received >= probes_sent || left <= 0 || stop_signals > signals_at_stop)
            break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        poll(&pfd, 1, (int)((left + NS_PER_MS - 1) / NS_PER_MS));
    }
    close(fd);

    char line[96];
    for (uint64_t i = 0; i < probes_sent; i++) {
        char *p = put_i64(line, (int64_t)i, ',');
        p = put_i64(p, probes[i].send_ns, ',');
        p = put_i64(p, probes[i].recv_ns, '\n');
        fwrite(line, 1, (size_t)(p - line), w.f);
    }
    csv_close(&w);
    fprintf(stderr,
            "vmigrate-client: probe: %llu sent, %llu lost, %llu slots skipped, %llu send errors\n",
            (unsigned long long)probes_sent, (unsigned long long)(probes_sent - probes_received),
            (unsigned long long)skipped, (unsigned long long)send_errors);
    return 0;
}

/* ------------------------------------------------------------------- load */

enum req_error { E_NONE, E_TIMEOUT, E_CONNECT, E_IO };
static const char *const error_names[] = {"", "timeout", "connect", "io"};

struct req {
    int64_t intended_ns;
    int64_t sent_ns; /* -1: not (completely) sent */
    int64_t done_ns; /* -1: no complete response */
    int32_t conn;    /* connection it is on, -1 when queued or finished */
    int16_t status;
    uint8_t error;
    uint8_t finished;
};

enum conn_state { C_FREE, C_CONNECTING, C_IDLE, C_BUSY };

struct conn {
    int fd;
    uint32_t gen;     /* bumped on close: tells stale epoll events */
    enum conn_state state;
    int idle_pos;     /* index in idle[] while C_IDLE */
    int64_t req;      /* request in flight, -1 none */
    size_t out_off;   /* bytes of the request written */
    int want_out;     /* EPOLLOUT registered */
    int reused;       /* has completed a request before */
    /* response parser */
    char *buf;
    size_t len, cap;
    int head_done, status, close_after;
    int64_t body_left; /* -1: body runs until EOF */
};

static struct req *reqs;
static size_t nreqs, reqs_cap;
static size_t queue_head;   /* requests [queue_head, nreqs) not yet on a connection */
static size_t oldest;       /* every request before this one is finished */
static size_t pending;      /* created, not finished */
static struct conn *conns;
static int *free_conns, nfree;
static int *idle, nidle;
static int nopen, max_open;
static int ep;
static char request_text[1024];
static size_t request_len;
static int64_t timeout_ns;
static uint64_t counts[4];

#define TAG_TIMER UINT64_MAX

static inline uint64_t conn_tag(int c) { return ((uint64_t)conns[c].gen << 32) | (uint32_t)c; }

static void finish(size_t i, enum req_error err, int status, int64_t now)
{
    struct req *r = &reqs[i];
    if (r->finished)
        return;
    r->finished = 1;
    r->error = (uint8_t)err;
    r->status = (int16_t)(err == E_NONE ? status : 0);
    r->done_ns = err == E_NONE ? now : -1;
    r->conn = -1;
    counts[err]++;
    pending--;
}

static void idle_remove(int c)
{
    int pos = conns[c].idle_pos, last = idle[--nidle];
    idle[pos] = last;
    conns[last].idle_pos = pos;
}

static void conn_close(int c, int abortive)
{
    struct conn *k = &conns[c];
    if (k->state == C_IDLE)
        idle_remove(c);
    if (abortive) { /* RST, no TIME_WAIT left behind */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(k->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
    close(k->fd);
    k->fd = -1;
    k->gen++;
    k->state = C_FREE;
    k->req = -1;
    k->len = 0;
    nopen--;
    free_conns[nfree++] = c;
}

/* The connection's request failed: record it, drop the connection. */
static void conn_fail(int c, enum req_error err, int64_t now)
{
    if (conns[c].req >= 0)
        finish((size_t)conns[c].req, err, 0, now);
    conn_close(c, 1);
}

static void conn_events(int c, int want_out)
{
    struct conn *k = &conns[c];
    if (k->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0u),
                             .data.u64 = conn_tag(c)};
    epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
    k->want_out = want_out;
}

/* Write (the rest of) the request. With `may_retry`, a reused keep-alive connection found dead
 * before any byte of the request left is closed and -1 returned: the request is still unsent
 * and the caller puts it on another connection. Otherwise a failed write fails the request. */
static int conn_write(int c, int64_t now, int may_retry)
{
    struct conn *k = &conns[c];
    while (k->out_off < request_len) {
        ssize_t n = send(k->fd, request_text + k->out_off, request_len - k->out_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_events(c, 1);
                return 0;
            }
            if (may_retry && k->out_off == 0 && k->reused) {
                reqs[k->req].conn = -1;
                k->req = -1;
                conn_close(c, 1);
                return -1;
            }
            conn_fail(c, E_IO, now);
            return 0;
        }
        k->out_off += (size_t)n;
    }
    reqs[k->req].sent_ns = mono_ns();
    conn_events(c, 0);
    return 0;
}

static void conn_assign(int c, size_t i)
{
    struct conn *k = &conns[c];
    k->req = (int64_t)i;
    k->out_off = 0;
    k->head_done = 0;
    k->len = 0;
    reqs[i].conn = c;
}

/* Open a connection for request i and put the request on it (or fail it with `connect`). */
static void conn_open(size_t i, int64_t now)
{
    static int socket_warned;
    int fd = socket(target_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (!socket_warned++)
            warnmsg("load: socket: %s", strerror(errno));
        finish(i, E_CONNECT, 0, now);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(fd, (struct sockaddr *)&target_addr, target_len);
    if (rc < 0 && errno != EINPROGRESS) {
        close(fd);
        finish(i, E_CONNECT, 0, now);
        return;
    }
    int c = free_conns[--nfree];
    struct conn *k = &conns[c];
    k->fd = fd;
    k->state = rc == 0 ? C_BUSY : C_CONNECTING;
    k->reused = 0;
    k->want_out = 1;
    nopen++;
    if (nopen > max_open)
        max_open = nopen;
    conn_assign(c, i);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u64 = conn_tag(c)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die(1, "epoll_ctl: %s", strerror(errno));
    if (rc == 0)
        conn_write(c, now, 0);
}

/* Put queued requests on idle connections, or on new ones while under --max-conns. */
static void dispatch(int64_t now)
{
    while (queue_head < nreqs) {
        size_t i = queue_head;
        if (reqs[i].finished) {
            queue_head++;
            continue;
        }
        if (nidle > 0) {
            int c = idle[nidle - 1];
            idle_remove(c);
            conns[c].state = C_BUSY;
            conn_assign(c, i);
            if (conn_write(c, now, 1) == 0)
                queue_head++;
            continue; /* on -1 the dead connection is gone: try the next one */
        }
        if (nopen >= opt.max_conns)
            break;
        queue_head++;
        conn_open(i, now);
    }
}

static int header_is(const char *line, size_t len, const char *name, const char **value,
                     size_t *vlen)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return 0;
    const char *v = line + n + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *value = v;
    *vlen = (size_t)(e - v);
    return 1;
}

static int has_token(const char *v, size_t vlen, const char *token)
{
    size_t t = strlen(token);
    for (size_t i = 0; i + t <= vlen; i++)
        if (strncasecmp(v + i, token, t) == 0)
            return 1;
    return 0;
}

/* Parse a response head of `len` bytes (through the blank line). Returns -1 if malformed. */
static int parse_head(struct conn *k, const char *h, size_t len)
{
    if (len < 12 || strncmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ')
        return -1;
    int status = 0;
    for (int d = 9; d < 12; d++) {
        if (h[d] < '0' || h[d] > '9')
            return -1;
        status = status * 10 + (h[d] - '0');
    }
    int http10 = h[7] == '0', keep_alive = 0;
    k->status = status;
    k->close_after = 0;
    k->body_left = -1;
    const char *line = memchr(h, '\n', len);
    while (line && (size_t)(line + 1 - h) < len) {
        line++;
        const char *eol = memchr(line, '\n', len - (size_t)(line - h));
        if (!eol)
            break;
        size_t ll = (size_t)(eol - line);
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        const char *v;
        size_t vlen;
        if (header_is(line, ll, "Content-Length", &v, &vlen)) {
            char num[24];
            if (vlen == 0 || vlen >= sizeof num)
                return -1;
            memcpy(num, v, vlen);
            num[vlen] = '\0';
            char *end;
            long long cl = strtoll(num, &end, 10);
            if (*end != '\0' || cl < 0)
                return -1;
            k->body_left = cl;
        } else if (header_is(line, ll, "Connection", &v, &vlen)) {
            if (has_token(v, vlen, "close"))
                k->close_after = 1;
            if (has_token(v, vlen, "keep-alive"))
                keep_alive = 1;
        } else if (header_is(line, ll, "Transfer-Encoding", &v, &vlen)) {
            if (!(vlen == 8 && strncasecmp(v, "identity", 8) == 0))
                return -1; /* chunked bodies are not supported (the agent never sends them) */
        }
        line = eol;
    }
    if (http10 && !keep_alive)
        k->close_after = 1;
    if (status == 204 || status == 304 || (status >= 100 && status < 200))
        k->body_left = 0;
    if (k->body_left < 0)
        k->close_after = 1; /* the body ends with the connection */
    return 0;
}

/* Consume buffered response bytes; completes the request when its response is whole. */
static void conn_parse(int c, int64_t now)
{
    struct conn *k = &conns[c];
    while (k->len > 0) {
        if (k->state != C_BUSY || k->req < 0) { /* bytes nobody asked for */
            conn_close(c, 1);
            return;
        }
        size_t used = 0;
        if (!k->head_done) {
            char *end = memmem(k->buf, k->len, "\r\n\r\n", 4);
            if (!end) {
                if (k->len > HEAD_MAX)
                    conn_fail(c, E_IO, now);
                return;
            }
            used = (size_t)(end - k->buf) + 4;
            if (parse_head(k, k->buf, used) < 0) {
                conn_fail(c, E_IO, now);
                return;
            }
            k->head_done = !(k->status >= 100 && k->status < 200); /* skip interim answers */
        }
        if (k->head_done && k->body_left != 0) {
            size_t avail = k->len - used;
            if (k->body_left < 0) {
                used = k->len;
            } else {
                size_t take = (size_t)k->body_left < avail ? (size_t)k->body_left : avail;
                used += take;
                k->body_left -= (int64_t)take;
            }
        }
        memmove(k->buf, k->buf + used, k->len - used);
        k->len -= used;
        if (k->head_done && k->body_left == 0) {
            finish((size_t)k->req, E_NONE, k->status, now);
            k->req = -1;
            k->head_done = 0;
            k->reused = 1;
            if (k->close_after || k->len > 0) {
                conn_close(c, 0);
                return;
            }
            k->state = C_IDLE;
            k->idle_pos = nidle;
            idle[nidle++] = c;
        }
    }
}

static void conn_readable(int c)
{
    struct conn *k = &conns[c];
    for (;;) {
        if (k->cap - k->len < 4096) {
            k->cap = k->cap ? k->cap * 2 : 8192;
            k->buf = xrealloc(k->buf, k->cap);
        }
        size_t room = k->cap - k->len;
        ssize_t n = recv(k->fd, k->buf + k->len, room, 0);
        int64_t now = mono_ns();
        if (n > 0) {
            k->len += (size_t)n;
            conn_parse(c, now);
            if (k->state == C_FREE || (size_t)n < room)
                return; /* closed, or drained (level-triggered: more data re-reports) */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* EOF or a reset */
        if (k->state == C_BUSY && k->req >= 0 && k->head_done && k->body_left < 0 && n == 0) {
            finish((size_t)k->req, E_NONE, k->status, now); /* body delimited by the close */
            k->req = -1;
        }
        conn_fail(c, E_IO, now);
        return;
    }
}

static void conn_event(int c, uint32_t events, int64_t now)
{
    struct conn *k = &conns[c];
    if (k->state == C_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof err;
        if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
            err = errno;
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            conn_fail(c, E_CONNECT, now);
            return;
        }
        if (!(events & EPOLLOUT))
            return;
        k->state = C_BUSY;
        conn_write(c, now, 0);
        return;
    }
    if ((events & EPOLLOUT) && k->state == C_BUSY && k->out_off < request_len) {
        conn_write(c, now, 0);
        if (k->state == C_FREE)
            return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        conn_readable(c);
}

static void build_request(void)
{
    char host[INET6_ADDRSTRLEN + 16];
    int v6 = target_addr.ss_family == AF_INET6;
    if (opt.port == 80)
        snprintf(host, sizeof host, v6 ? "[%s]" : "%s", opt.target);
    else
        snprintf(host, sizeof host, v6 ? "[%s]:%d" : "%s:%d", opt.target, opt.port);
    int n = snprintf(request_text, sizeof request_text,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: vmigrate-client\r\n\r\n",
                     opt.path, host);
    if (n < 0 || (size_t)n >= sizeof request_text)
        die(2, "--path too long");
    request_len = (size_t)n;
}

static void arm_timer(int tfd, int64_t at, int64_t *armed)
{
    if (at == *armed)
        return;
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (at != INT64_MAX) {
        its.it_value = ns_to_timespec(at > 0 ? at : 1);
    }
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        die(1, "timerfd_settime: %s", strerror(errno));
    *armed = at;
}

static int run_load(void)
{
    build_request();
    timeout_ns = opt.timeout_ms * NS_PER_MS;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.max_conns + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)opt.max_conns + 64 ? rl.rlim_max
                                                               : (rlim_t)opt.max_conns + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    conns = calloc((size_t)opt.max_conns, sizeof *conns);
    free_conns = calloc((size_t)opt.max_conns, sizeof *free_conns);
    idle = calloc((size_t)opt.max_conns, sizeof *idle);
    if (!conns || !free_conns || !idle)
        die(1, "out of memory");
    for (int c = (int)opt.max_conns - 1; c >= 0; c--) {
        conns[c].fd = -1;
        conns[c].req = -1;
        free_conns[nfree++] = c;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (ep < 0 || tfd < 0)
        die(1, "epoll/timerfd: %s", strerror(errno));
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TAG_TIMER};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0)
        die(1, "epoll_ctl: %s", strerror(errno));
    prctl(PR_SET_TIMERSLACK, 1000UL);
    struct csv w;
    csv_open(&w, "intended_ns,sent_ns,done_ns,status,error\n"); /* fails before READY */

    /* Signals only arrive inside epoll_pwait: no lost wake-up between check and wait. */
    sigset_t stopset, waitmask;
    sigemptyset(&stopset);
    sigaddset(&stopset, SIGTERM);
    sigaddset(&stopset, SIGINT);
    sigprocmask(SIG_BLOCK, &stopset, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);

    say_ready();
    const double period_ns = 1e9 / opt.rate_rps;
    const int64_t start = mono_ns();
    const int64_t end = opt.duration_s > 0 ? start + (int64_t)(opt.duration_s * 1e9) : INT64_MAX;
    int64_t next_intended = start, armed = -1, drain_end = INT64_MAX;
    int stopping = 0;
    struct epoll_event evs[256];
    for (;;) {
        int64_t now = mono_ns();
        if (!stopping && (stop_signals || now >= end)) {
            stopping = 1;
            drain_end = now + timeout_ns;
        }
        if (!stopping) {
            while (next_intended <= now && next_intended < end) {
                if (nreqs == reqs_cap) {
                    reqs_cap = reqs_cap ? reqs_cap * 2 : 65536;
                    reqs = xrealloc(reqs, reqs_cap * sizeof *reqs);
                }
                reqs[nreqs] = (struct req){.intended_ns = next_intended, .sent_ns = -1,
                                           .done_ns = -1, .conn = -1};
                nreqs++;
                pending++;
                next_intended = start + (int64_t)((double)nreqs * period_ns + 0.5);
            }
        }
        /* Time out what waited too long for its answer (oldest first: same timeout for all). */
        while (oldest < nreqs) {
            struct req *r = &reqs[oldest];
            if (!r->finished) {
                if (r->intended_ns + timeout_ns > now)
                    break;
                int c = r->conn;
                finish(oldest, E_TIMEOUT, 0, now);
                if (c >= 0) {
                    conns[c].req = -1;
                    conn_close(c, 1);
                }
            }
            oldest++;
        }
        dispatch(now);
        if (stopping && (pending == 0 || now >= drain_end || stop_signals >= 2))
            break;

        int64_t wake = drain_end;
        if (!stopping)
            wake = next_intended < end ? next_intended : end;
        if (oldest < nreqs && reqs[oldest].intended_ns + timeout_ns < wake)
            wake = reqs[oldest].intended_ns + timeout_ns;
        arm_timer(tfd, wake, &armed);
        int n = epoll_pwait(ep, evs, 256, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(1, "epoll_wait: %s", strerror(errno));
        }
        now = mono_ns();
        for (int e = 0; e < n; e++) {
            uint64_t tag = evs[e].data.u64;
            if (tag == TAG_TIMER) {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN)
                    die(1, "timerfd read: %s", strerror(errno));
                armed = -1; /* expired: re-arm even for the same time */
                continue;
            }
            int c = (int)(uint32_t)tag;
            if (conns[c].state == C_FREE || conns[c].gen != (uint32_t)(tag >> 32))
                continue; /* closed earlier in this batch */
            conn_event(c, evs[e].events, now);
        }
    }
    int64_t now = mono_ns();
    for (size_t i = oldest; i < nreqs; i++)
        finish(i, E_TIMEOUT, 0, now);
    for (int c = 0; c < opt.max_conns; c++)
        if (conns[c].state != C_FREE)
            conn_close(c, 0);

    char line[128];
    for (size_t i = 0; i < nreqs; i++) {
        const struct req *r = &reqs[i];
        char *p = put_i64(line, r->intended_ns, ',');
        p = put_i64(p, r->sent_ns, ',');
        p = put_i64(p, r->done_ns, ',');
        p = put_i64(p, r->status, ',');
        size_t elen = strlen(error_names[r->error]);
        memcpy(p, error_names[r->error], elen);
        p += elen;
        *p++ = '\n';
        fwrite(line, 1, (size_t)(p - line), w.f);
    }
    csv_close(&w);
    fprintf(stderr,
            "vmigrate-client: load: %zu requests, %llu ok, %llu timeout, %llu connect, %llu io; "
            "at most %d connections\n",
            nreqs, (unsigned long long)counts[E_NONE], (unsigned long long)counts[E_TIMEOUT],
            (unsigned long long)counts[E_CONNECT], (unsigned long long)counts[E_IO], max_open);
    return 0;
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    install_signals();
    return strcmp(opt.mode, "probe") == 0 ? run_probe() : run_load();
}
