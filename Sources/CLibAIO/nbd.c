// Sockets for the NBD front: TCP listeners and socket-activation checks.
#include "CLibAIONBD.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

const int clibaio_SEEK_DATA = SEEK_DATA;
const int clibaio_SEEK_HOLE = SEEK_HOLE;
const unsigned int clibaio_EPOLLET = EPOLLET;

int clibaio_tcp_listen(const char *host, const char *port, int backlog) {
    struct addrinfo hints, *list = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo(*host ? host : NULL, port, &hints, &list);
    if (rc != 0) return rc == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL;
    int last = -EADDRNOTAVAIL;
    for (struct addrinfo *a = list; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            last = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, backlog) == 0) {
            freeaddrinfo(list);
            return fd;
        }
        last = -errno;
        close(fd);
    }
    freeaddrinfo(list);
    return last;
}

int clibaio_is_stream_listener(int fd) {
    int type = 0, listening = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return 0;
    len = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) return 0;
    struct sockaddr_storage addr;
    socklen_t alen = sizeof(addr);
    if (getsockname(fd, (struct sockaddr *)&addr, &alen) != 0) return 0;
    int family = addr.ss_family;
    return type == SOCK_STREAM && listening && (family == AF_UNIX || family == AF_INET || family == AF_INET6);
}

int clibaio_local_port(int fd) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) return -errno;
    if (addr.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&addr)->sin_port);
    if (addr.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    return -EAFNOSUPPORT;
}

void clibaio_nbd_tune_connection(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void clibaio_peer_name(int fd, char *buf, int len) {
    struct sockaddr_storage addr;
    socklen_t alen = sizeof(addr);
    char host[INET6_ADDRSTRLEN] = "";
    if (len <= 0) return;
    buf[0] = 0;
    if (getpeername(fd, (struct sockaddr *)&addr, &alen) != 0) {
        snprintf(buf, len, "unknown");
    } else if (addr.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(a->sin_port));
    } else if (addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        snprintf(buf, len, "unix");
    }
}
