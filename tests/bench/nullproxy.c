/*
 * nullproxy: the floor of the benchmark (tests/bench/run.py --floor). Not part of pgfunnel.
 *
 * The least a proxy in front of PostgreSQL can do on this design: one epoll loop, each client
 * paired with its own server connection, bytes read from one side and written to the other
 * with one read() and one write(), nothing parsed, no pooling, no authentication of its own
 * (the client's login passes through to PostgreSQL). Its CPU per transaction is what the
 * kernel charges any such proxy for its system calls; what a pooler costs above it is its own.
 *
 *     nullproxy LISTEN_PORT SERVER_PORT      (both on 127.0.0.1; SIGTERM ends it)
 *
 * A write that the socket cannot take at once (rare with small messages) is finished with
 * poll() before the next read: a floor for latency and CPU, not a general proxy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct side {
	int fd;
	struct side *peer;
} side_t;

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static void nodelay(int fd)
{
	int on = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
}

/* Writes all of buf to fd (non-blocking), waiting with poll() when the socket is full. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EAGAIN) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};

			if (poll(&p, 1, -1) < 0 && errno != EINTR)
				return -1;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			return -1;
		}
	}
	return 0;
}

/* Closing a socket takes it out of the epoll set (no other descriptor refers to it). */
static void close_pair(side_t *s)
{
	side_t *p = s->peer;

	close(s->fd);
	close(p->fd);
	free(s < p ? s : p);
}

static void accept_one(int ep, int lfd, int server_port)
{
	struct sockaddr_in sa = loopback(server_port);
	side_t *pair;
	int cfd, sfd;

	cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (cfd < 0)
		return;
	sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	/* A blocking connect: loopback answers at once, and the floor does not time logins. */
	if (sfd < 0 || connect(sfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (sfd >= 0)
			close(sfd);
		close(cfd);
		return;
	}
	if (!(pair = calloc(2, sizeof(*pair)))) {
		close(sfd);
		close(cfd);
		return;
	}
	fcntl(sfd, F_SETFL, fcntl(sfd, F_GETFL) | O_NONBLOCK);
	nodelay(cfd);
	nodelay(sfd);
	pair[0] = (side_t){cfd, &pair[1]};
	pair[1] = (side_t){sfd, &pair[0]};
	for (int i = 0; i < 2; i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &pair[i]};

		epoll_ctl(ep, EPOLL_CTL_ADD, pair[i].fd, &ev);
	}
}

int main(int argc, char **argv)
{
	static char buf[65536];
	struct epoll_event evs[256];
	struct sockaddr_in la;
	int lfd, ep, on = 1, server_port;

	if (argc != 3) {
		fprintf(stderr, "usage: nullproxy LISTEN_PORT SERVER_PORT\n");
		return 2;
	}
	la = loopback(atoi(argv[1]));
	server_port = atoi(argv[2]);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	signal(SIGPIPE, SIG_IGN);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd >= 0)
		setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof(la)) < 0 || listen(lfd, 4096) < 0) {
		perror("nullproxy: listen");
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	{
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};

		epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	}
	while (!stop) {
		int n = epoll_wait(ep, evs, 256, -1);

		for (int i = 0; i < n; i++) {
			side_t *s = evs[i].data.ptr;
			ssize_t got;

			if (!s) {
				accept_one(ep, lfd, server_port);
				continue;
			}
			got = read(s->fd, buf, sizeof(buf));
			if (got < 0 && errno == EAGAIN)
				continue;
			if (got <= 0 || write_all(s->peer->fd, buf, (size_t)got) < 0) {
				close_pair(s);
				/* Its other side may be later in evs: stop this batch and poll
				 * again. */
				break;
			}
		}
	}
	return 0;
}
