#ifndef CLIBAIO_NBD_H
#define CLIBAIO_NBD_H

// Sockets for the NBD front: TCP listeners and socket-activation checks.

/// Resolves host (numeric or a name; "" for every address) and port, binds the first address
/// that works with SO_REUSEADDR, listens (non-blocking, cloexec). -errno on failure, or
/// -EADDRNOTAVAIL when the name does not resolve.
int clibaio_tcp_listen(const char *host, const char *port, int backlog);
/// 1 when fd is a listening SOCK_STREAM socket (AF_UNIX, AF_INET or AF_INET6), 0 otherwise.
int clibaio_is_stream_listener(int fd);
/// The local port of a bound TCP socket, or -errno (for tests that bind port 0).
int clibaio_local_port(int fd);
/// TCP_NODELAY on a TCP connection (replies are small and latency-bound); a no-op on AF_UNIX.
void clibaio_nbd_tune_connection(int fd);

/// The peer of a connected socket as text ("127.0.0.1:41234", "[::1]:41234", "unix"), into buf.
void clibaio_peer_name(int fd, char *buf, int len);
/// lseek whences Glibc's Swift overlay does not export (they need _GNU_SOURCE).
extern const int clibaio_SEEK_DATA;
extern const int clibaio_SEEK_HOLE;
/// Edge-triggered epoll: an NBD connection is read until EAGAIN, and not at all while the disk is
/// paused, without the loop spinning on a readable socket it does not read.
extern const unsigned int clibaio_EPOLLET;

#endif
