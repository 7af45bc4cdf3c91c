#define _GNU_SOURCE
#include "boot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int do_mount(struct err *e, const char *src, const char *dst, const char *type, unsigned long flags,
		    const char *data)
{
	if (mkdir_p(dst, 0755) < 0)
		return fail_errno(e, "mkdir %s", dst);
	if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY)
		return fail_errno(e, "mount %s on %s", type, dst);
	return 0;
}

/*
 * The initramfs root cannot be pivot_root'ed away from (the kernel refuses the rootfs mount), which every
 * container start needs. Bind the root onto a subdirectory and move that over "/": same files, no copy,
 * but now a real mount with a parent.
 */
static int remount_root(struct err *e)
{
	if (mkdir("/newroot", 0755) < 0 && errno != EEXIST)
		return fail_errno(e, "mkdir /newroot");
	if (mount("/", "/newroot", NULL, MS_BIND, NULL) < 0)
		return fail_errno(e, "bind / on /newroot");
	if (chdir("/newroot") < 0)
		return fail_errno(e, "chdir /newroot");
	if (mount("/newroot", "/", NULL, MS_MOVE, NULL) < 0)
		return fail_errno(e, "move /newroot to /");
	if (chroot(".") < 0 || chdir("/") < 0)
		return fail_errno(e, "chroot into the new root");
	return 0;
}

int boot_mounts(struct err *e)
{
	if (remount_root(e) < 0)
		return -1;
	if (do_mount(e, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 ||
	    do_mount(e, "sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 ||
	    do_mount(e, "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 ||
	    do_mount(e, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620") < 0 ||
	    do_mount(e, "shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0 ||
	    do_mount(e, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0 ||
	    do_mount(e, "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
		return -1;
	/* The kernel leaves fds 0-2 closed when the initramfs lacks /dev/console. */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0) {
			int c = open("/dev/console", O_RDWR);
			if (c >= 0 && c != fd)
				dup2(c, fd), close(c);
		}
	return 0;
}

int boot_modules(struct err *e)
{
	FILE *f = fopen("/modules/load.list", "re");
	char line[256], path[512];
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (!*line || strchr(line, '/'))
			continue;
		snprintf(path, sizeof(path), "/modules/%s", line);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			fclose(f);
			return fail_errno(e, "open module %s", path);
		}
		long r = syscall(SYS_finit_module, fd, "", 0);
		int saved = errno;
		close(fd);
		if (r < 0 && saved != EEXIST) {
			errno = saved;
			fclose(f);
			return fail_errno(e, "load module %s", line);
		}
	}
	fclose(f);
	return 0;
}

static int find_port(const char *name, char *dev, size_t devlen)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *de;
	int found = 0;
	if (!d)
		return 0;
	while (!found && (de = readdir(d))) {
		char p[512], buf[128] = {0};
		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "/sys/class/virtio-ports/%s/name", de->d_name);
		if (read_line(p, buf, sizeof(buf)) <= 0)
			continue;
		if (strcmp(buf, name) == 0) {
			snprintf(dev, devlen, "/dev/%s", de->d_name);
			found = 1;
		}
	}
	closedir(d);
	return found;
}

int boot_open_port(const char *name, int timeout_ms, struct err *e)
{
	char dev[300];
	struct timespec pause = {0, 2 * 1000 * 1000};
	for (int waited = 0;; waited += 2) {
		if (find_port(name, dev, sizeof(dev))) {
			int fd = open(dev, O_RDWR | O_CLOEXEC);
			if (fd >= 0)
				return fd;
			if (errno != ENOENT)
				return fail_errno(e, "open %s", dev);
		}
		if (waited >= timeout_ms)
			return fail(e, ENODEV, "virtio-serial port %s did not appear", name);
		nanosleep(&pause, NULL);
	}
}

int mount_share(const char *tag, const char *fstype, const char *target, struct err *e)
{
	if (mkdir_p(target, 0755) < 0)
		return fail_errno(e, "mkdir %s", target);
	if (strcmp(fstype, "virtiofs") == 0) {
		if (mount(tag, target, "virtiofs", 0, NULL) < 0)
			return fail_errno(e, "mount virtiofs %s", tag);
	} else if (strcmp(fstype, "9p") == 0) {
		if (mount(tag, target, "9p", 0, "trans=virtio,version=9p2000.L,msize=512000,cache=mmap") < 0)
			return fail_errno(e, "mount 9p %s", tag);
	} else {
		return fail(e, EINVAL, "unknown share filesystem %s", fstype);
	}
	return 0;
}

int boot_probe_requested(void)
{
	char cmdline[4096] = {0};
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	for (char *tok = strtok(cmdline, " \n"); tok; tok = strtok(NULL, " \n"))
		if (strcmp(tok, "hc.probe") == 0)
			return 1;
	return 0;
}

void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	_exit(0);
}

int set_clock_ns(unsigned long long ns, struct err *e)
{
	struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
	if (clock_settime(CLOCK_REALTIME, &ts) < 0)
		return fail_errno(e, "set the clock");
	return 0;
}

#define RNDADDENTROPY 0x40085203 /* _IOW('R', 0x03, int[2]) */
#define RNDRESEEDCRNG 0x5207 /* _IO('R', 0x07) */

int reseed_random(const char *hex, struct err *e)
{
	struct {
		int entropy_count, buf_size;
		unsigned char buf[64];
	} pool = {0};
	size_t n = strlen(hex);
	if (n == 0 || n % 2 || n / 2 > sizeof(pool.buf))
		return fail(e, EINVAL, "seed must be 2-128 hex digits");
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return fail(e, EINVAL, "seed is not hex");
		pool.buf[i] = (unsigned char)v;
	}
	pool.buf_size = (int)(n / 2);
	pool.entropy_count = pool.buf_size * 8;
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC), rc = -1;
	if (fd < 0)
		return fail_errno(e, "open /dev/urandom");
	if (ioctl(fd, RNDADDENTROPY, &pool) < 0)
		fail_errno(e, "add entropy");
	else if (ioctl(fd, RNDRESEEDCRNG) < 0)
		fail_errno(e, "reseed the random generator");
	else
		rc = 0;
	close(fd);
	return rc;
}
