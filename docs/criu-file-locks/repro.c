/*
 * The smallest program that shows CRIU losing a POSIX lock on restore: it
 * maps a file MAP_SHARED and holds a read lock on byte 128 of it (the shape
 * of SQLite's WAL index and its "DMS" lock), then waits. Dump it and restore
 * it with --file-locks: before the dump /proc/locks lists the lock, after
 * the restore (CRIU 4.2.1) it does not. See ./reproduce and README.md.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "repro.shm";
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 128, .l_len = 1 };
	int fd;

	/* Nothing inherited beyond stdio: CRIU dumps every descriptor. */
	close_range(3, ~0U, 0);
	fd = open(path, O_RDWR | O_CREAT, 0644);

	if (fd < 0 || ftruncate(fd, 32768) < 0) {
		perror(path);
		return 1;
	}
	if (mmap(NULL, 32768, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	if (fcntl(fd, F_SETLK, &fl) < 0) {
		perror("fcntl(F_SETLK)");
		return 1;
	}
	printf("%d\n", getpid());
	fflush(stdout);
	fclose(stdout);
	for (;;)
		pause();
}
