/* A stand-in for nginx in critest's images. Like nginx, its command line reads "nginx: master process ...", it
 * writes /var/run/nginx.pid, and it serves HTTP: a 200 page for every request, on port 80 or $NGINX_PORT. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char PAGE[] = "<html><head><title>Welcome to nginx!</title></head><body>Welcome to nginx!</body></html>\n";

static void down(int sig) { (void)sig; _exit(0); }

static int listen_on(int port) {
  int one = 1, zero = 0;
  int fd = socket(AF_INET6, SOCK_STREAM, 0); /* dual stack where the kernel has IPv6 */
  if (fd >= 0) {
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0 && listen(fd, 64) == 0) return fd;
    close(fd);
  }
  fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a4, sizeof a4) != 0 || listen(fd, 64) != 0) {
    perror("nginx: listen");
    exit(1);
  }
  return fd;
}

int main(int argc, char **argv) {
  if (strncmp(argv[0], "nginx: ", 7) != 0) {
    /* Re-exec under nginx's process title; the path keeps the process name (comm) "nginx" for pidof. */
    char self[4096], *args[64] = {"nginx: master process", "nginx"};
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    int i;
    for (i = 1; i < argc && i < 61; i++) args[i + 1] = argv[i];
    args[i + 1] = 0;
    if (n > 0) {
      self[n] = 0;
      execv(self, args);
    }
  }
  struct sigaction sa = {0};
  sa.sa_handler = down;
  sigaction(SIGINT, &sa, 0);
  sigaction(SIGTERM, &sa, 0);
  sigaction(SIGQUIT, &sa, 0);
  signal(SIGPIPE, SIG_IGN);
  const char *p = getenv("NGINX_PORT");
  int fd = listen_on(p ? atoi(p) : 80);
  FILE *pid = fopen("/var/run/nginx.pid", "w");
  if (pid) {
    fprintf(pid, "%d\n", (int)getpid());
    fclose(pid);
  }
  char head[256];
  int len = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n", sizeof PAGE - 1);
  for (;;) {
    int c = accept(fd, 0, 0);
    if (c < 0) continue;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[4096];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof req - 1 && (r = read(c, req + got, sizeof req - 1 - got)) > 0) {
      got += r;
      req[got] = 0;
      if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
    }
    if (write(c, head, len) == len) (void)!write(c, PAGE, sizeof PAGE - 1);
    close(c);
  }
}
