/* An open-loop HTTP/1.1 load generator: requests due at a fixed rate, each sent when due whatever
 * the others are doing, each latency counted from its due time (no coordinated omission).
 *
 * Why it exists: wrk is closed loop, and neither wrk2 nor vegeta is in Debian. The Python paced
 * client in bench/serve.py shares the two cores with the service and ticks in 1 ms timers; past
 * about 1,700 requests a second its own send lag went over the 2 ms it allows itself. This one
 * paces with a timerfd (nanoseconds), spends a few percent of a core, and reports its own lag.
 *
 * bench/serve.py builds it with gcc into its work folder and reads the one JSON line it prints.
 * usage: openloop HOST PORT RATE SECONDS PREOPEN MAXCONNS BODIES PATH KEY
 *   BODIES: one request body a line (sent in turn); PATH and KEY: the POST's path and bearer key.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536
#define TIMER_TAG UINT64_MAX

typedef struct {
    int fd;
    int connected;   /* the connect finished */
    double due;      /* due time of the request in flight, 0 when none */
    size_t used;     /* bytes of the answer read so far */
    char buf[BUF];
} conn_t;

static struct sockaddr_in addr;
static char **reqs;
static size_t *req_len;
static size_t n_reqs, next_req;
static conn_t **conns;
static int n_conns, max_conns, open_conns, opened, epfd;
static int *idle;
static int n_idle;
static double *queue; /* due times waiting for a connection (a ring) */
static size_t q_head, q_tail, q_cap;
static double *lat, *lag;
static size_t n_lat, n_lag, errors_status, errors_socket;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "openloop: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void open_conn(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) die("connect");
    conn_t *c = calloc(1, sizeof *c);
    c->fd = fd;
    int slot = -1;
    for (int i = 0; i < n_conns; i++)
        if (conns[i] == NULL) { slot = i; break; }
    if (slot < 0) {
        conns = realloc(conns, sizeof *conns * (n_conns + 1));
        slot = n_conns++;
    }
    conns[slot] = c;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u64 = (uint64_t)slot};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    open_conns++;
    opened++;
}

static void send_on(int slot, double due) {
    conn_t *c = conns[slot];
    const char *r = reqs[next_req % n_reqs];
    size_t len = req_len[next_req % n_reqs];
    next_req++;
    c->due = due;
    c->used = 0;
    ssize_t w = send(c->fd, r, len, MSG_NOSIGNAL); /* a request fits the socket buffer at once */
    if (w != (ssize_t)len) {
        errors_socket++;
        lat[n_lat++] = now() - due;
        c->due = 0;
    }
}

static void enqueue(double due) {
    if (q_tail - q_head == q_cap) { fprintf(stderr, "openloop: queue full\n"); exit(2); }
    queue[q_tail++ % q_cap] = due;
}

static void ready(int slot) {
    if (q_head < q_tail) send_on(slot, queue[q_head++ % q_cap]);
    else idle[n_idle++] = slot;
}

static void drop(int slot) {
    conn_t *c = conns[slot];
    if (c->due) { /* the answer never came */
        errors_socket++;
        lat[n_lat++] = now() - c->due;
    }
    for (int i = 0; i < n_idle; i++)
        if (idle[i] == slot) { idle[i] = idle[--n_idle]; break; }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
    conns[slot] = NULL;
    open_conns--;
    if (q_head < q_tail && open_conns < max_conns) open_conn();
}

/* One whole answer in c->buf? Then its status, and whether it closes the connection. */
static int answer_done(conn_t *c, int *status, int *closes) {
    c->buf[c->used] = 0;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return 0;
    char *cl = strcasestr(c->buf, "\r\ncontent-length:");
    if (!cl || cl > end) return 0;
    long length = strtol(cl + 17, NULL, 10);
    if ((size_t)(end + 4 - c->buf) + length > c->used) return 0;
    *status = atoi(c->buf + 9);
    char *conn_hdr = strcasestr(c->buf, "\r\nconnection: close");
    *closes = conn_hdr && conn_hdr < end;
    return 1;
}

static void on_event(int slot, uint32_t events) {
    conn_t *c = conns[slot];
    if (!c) return;
    if (!c->connected && (events & EPOLLOUT)) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { drop(slot); return; }
        c->connected = 1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)slot};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        ready(slot);
        return;
    }
    if (events & EPOLLIN) {
        ssize_t r = recv(c->fd, c->buf + c->used, BUF - 1 - c->used, 0);
        if (r > 0) {
            c->used += r;
            int status, closes;
            if (c->due && answer_done(c, &status, &closes)) {
                lat[n_lat++] = now() - c->due;
                if (status < 200 || status > 299) errors_status++;
                c->due = 0;
                if (closes) { drop(slot); return; }
                ready(slot);
            }
            return;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        drop(slot);
        return;
    }
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) drop(slot);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, size_t n, double q) {
    if (!n) return 0;
    size_t i = (size_t)(q / 100.0 * (n - 1) + 0.5);
    return v[i] * 1000;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: openloop HOST PORT RATE SECONDS PREOPEN MAXCONNS BODIES PATH KEY\n");
        return 2;
    }
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int preopen = atoi(argv[5]);
    max_conns = atoi(argv[6]);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) { fprintf(stderr, "openloop: bad host\n"); return 2; }

    FILE *f = fopen(argv[7], "r");
    if (!f) die("bodies");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        reqs = realloc(reqs, sizeof *reqs * (n_reqs + 1));
        req_len = realloc(req_len, sizeof *req_len * (n_reqs + 1));
        int n = asprintf(&reqs[n_reqs],
                         "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                         "Authorization: Bearer %s\r\nContent-Length: %zd\r\n\r\n%s",
                         argv[8], argv[1], argv[2], argv[9], len, line);
        if (n < 0) die("asprintf");
        req_len[n_reqs++] = (size_t)n;
    }
    fclose(f);
    if (!n_reqs) { fprintf(stderr, "openloop: no bodies\n"); return 2; }

    size_t total = (size_t)(rate * seconds);
    lat = malloc(sizeof *lat * (total + 1));
    lag = malloc(sizeof *lag * (total + 1));
    q_cap = total + 1;
    queue = malloc(sizeof *queue * q_cap);
    idle = malloc(sizeof *idle * (max_conns + preopen + 1));
    epfd = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    struct epoll_event evs[256];
    for (int i = 0; i < preopen; i++) open_conn();
    double warm = now() + 2;
    while (n_idle < preopen && now() < warm) {
        int n = epoll_wait(epfd, evs, 256, 10);
        for (int i = 0; i < n; i++)
            if (evs[i].data.u64 != TIMER_TAG) on_event((int)evs[i].data.u64, evs[i].events);
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double start = now() + 0.01;
    size_t sent = 0;
    double stop_wait = 0;
    for (;;) {
        double t = now();
        while (sent < total && start + sent / rate <= t) {
            double due = start + sent / rate;
            lag[n_lag++] = t - due;
            sent++;
            if (n_idle) send_on(idle[--n_idle], due);
            else {
                enqueue(due);
                if (open_conns < max_conns) open_conn();
            }
        }
        if (sent == total) {
            if (!stop_wait) stop_wait = t + 15;
            if (n_lat >= total || t > stop_wait) break;
        }
        if (sent < total) {
            double next = start + sent / rate;
            struct itimerspec its = {0};
            its.it_value.tv_sec = (time_t)next;
            its.it_value.tv_nsec = (long)((next - (time_t)next) * 1e9);
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        int n = epoll_wait(epfd, evs, 256, sent < total ? -1 : 10);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == TIMER_TAG) {
                uint64_t x;
                while (read(tfd, &x, sizeof x) > 0) {}
            } else on_event((int)evs[i].data.u64, evs[i].events);
        }
    }
    double elapsed = now() - start;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    size_t missing = total - (n_lat < total ? n_lat : total);
    qsort(lat, n_lat, sizeof *lat, cmp);
    qsort(lag, n_lag, sizeof *lag, cmp);
    printf("{\"requests\": %zu, \"answered\": %zu, \"errors\": %zu, \"non_2xx\": %zu, \"socket_errors\": %zu, "
           "\"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
           "\"connections_opened\": %d, \"client_send_lag_p99_ms\": %.3f, \"client_send_lag_max_ms\": %.3f, "
           "\"client_cpu_share\": %.3f}\n",
           total, n_lat, errors_status + errors_socket + missing, errors_status, errors_socket + missing,
           pct(lat, n_lat, 50), pct(lat, n_lat, 90), pct(lat, n_lat, 99), n_lat ? lat[n_lat - 1] * 1000 : 0,
           opened, pct(lag, n_lag, 99), n_lag ? lag[n_lag - 1] * 1000 : 0, elapsed > 0 ? cpu / elapsed : 0);
    return 0;
}
