/*
 * forkprobe: a minimal process that writes private anonymous memory, forks, and times what the
 * kernel does for it -- the reference ptshare's fork, exit and munmap costs are fitted to and
 * compared with.  Compiled at run time with the system's cc by ptshare.realfork.probe.
 *
 *   forkprobe size=BYTES [stride=BYTES] [vmas=N] [layout=fresh|recycled|shuffled] [thp=0|1]
 *             [forks=N] [warm=0|1]
 *
 * Maps `size` bytes of private anonymous memory (MADV_NOHUGEPAGE unless thp=1) and writes one byte
 * every `stride` bytes; maps `vmas` more VMAs of one page each, 8 KiB apart (so none merge), and
 * writes them.  `layout` says which physical pages the writes get: `fresh`, what the allocator
 * hands out (a new program's memory); `recycled`, as much memory written and freed again first,
 * so the pages come back from the per-CPU free lists in another order; `shuffled`, the pages
 * written in a random order, so that virtually adjacent pages are physically far apart.
 *
 * Then `forks` times: fork(); the child unmaps all of it (timed: exit_mmap's work on the copy)
 * and _exits; the parent waits.  With warm=1 one more fork comes first and is not reported: the
 * child's page-table pages then come from memory the hypervisor has backed.  Finally the parent
 * unmaps everything (timed).  Every time is taken twice: CLOCK_MONOTONIC (wall) and
 * CLOCK_THREAD_CPUTIME_ID (this thread's CPU time: the kernel's work, without the time another
 * process held the CPU).  Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

struct span { long long wall, cpu; };
struct times { struct span t0, t1; };

static long long clock_ns(clockid_t id)
{
	struct timespec t;
	clock_gettime(id, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void start(struct times *t)
{
	t->t0.wall = clock_ns(CLOCK_MONOTONIC);
	t->t0.cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

static struct span stop(struct times *t)
{
	struct span s;
	s.cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - t->t0.cpu;
	s.wall = clock_ns(CLOCK_MONOTONIC) - t->t0.wall;
	return s;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static unsigned long arg(int argc, char **argv, const char *key, unsigned long dflt)
{
	size_t n = strlen(key);
	for (int i = 1; i < argc; i++)
		if (!strncmp(argv[i], key, n) && argv[i][n] == '=')
			return strtoul(argv[i] + n + 1, NULL, 0);
	return dflt;
}

static const char *sarg(int argc, char **argv, const char *key, const char *dflt)
{
	size_t n = strlen(key);
	for (int i = 1; i < argc; i++)
		if (!strncmp(argv[i], key, n) && argv[i][n] == '=')
			return argv[i] + n + 1;
	return dflt;
}

/* Of the written pages, the share whose frame is next to the frame of the page before, one more
 * or one less (pages the kernel freed and handed back last-in first-out come in descending
 * order); -1 when /proc/self/pagemap hides frame numbers: not root. */
static double adjacent(char *a, unsigned long size, unsigned long stride)
{
	unsigned long n = size / PAGE, up = 0, pages = 0;
	uint64_t *e = malloc(n * sizeof(*e)), prev = 0, mask = (1ULL << 55) - 1;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (!e || fd < 0 || pread(fd, e, n * sizeof(*e), (uintptr_t)a / PAGE * sizeof(*e)) != (ssize_t)(n * sizeof(*e)))
		die("pagemap");
	close(fd);
	for (unsigned long i = 0; i < n; i += stride / PAGE) {
		uint64_t pfn = e[i] & mask;
		if (!pfn) {
			free(e);
			return -1;
		}
		if (pages++ && (pfn == prev + stride / PAGE || pfn + stride / PAGE == prev))
			up++;
		prev = pfn;
	}
	free(e);
	return pages > 1 ? (double)up / (pages - 1) : 1.0;
}

static void recycle(unsigned long size)
{
	char *r = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (r == MAP_FAILED)
		die("mmap");
	munmap(r, size);
}

static void write_pages(char *a, unsigned long size, unsigned long stride, int shuffled)
{
	unsigned long n = size / stride;
	if (!shuffled) {
		for (unsigned long i = 0; i < n; i++)
			a[i * stride] = 1;
		return;
	}
	unsigned long *order = malloc(n * sizeof(*order)), seed = 88172645463325252UL;
	if (!order)
		die("malloc");
	for (unsigned long i = 0; i < n; i++)
		order[i] = i;
	for (unsigned long i = n - 1; i > 0; i--) {
		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		unsigned long j = seed % (i + 1), t = order[i];
		order[i] = order[j], order[j] = t;
	}
	for (unsigned long i = 0; i < n; i++)
		a[order[i] * stride] = 1;
	free(order);
}

static void print_span(const char *key, struct span s, const char *sep)
{
	printf("\"%s\": {\"wall_ns\": %lld, \"cpu_ns\": %lld}%s", key, s.wall, s.cpu, sep);
}

int main(int argc, char **argv)
{
	unsigned long size = arg(argc, argv, "size", 0), stride = arg(argc, argv, "stride", PAGE);
	unsigned long nvmas = arg(argc, argv, "vmas", 0), forks = arg(argc, argv, "forks", 1);
	int warm = arg(argc, argv, "warm", 1), thp = arg(argc, argv, "thp", 0);
	const char *layout = sarg(argc, argv, "layout", "fresh");
	int shuffled = !strcmp(layout, "shuffled");
	struct times t;

	if (size % PAGE || stride % PAGE || !stride || (strcmp(layout, "fresh") && strcmp(layout, "recycled") && !shuffled)) {
		fprintf(stderr, "forkprobe: size and stride must be multiples of 4096; layout fresh, recycled or shuffled\n");
		return 2;
	}
	/* where the child puts its times; mapped first, so that it lies in none of the ranges the child unmaps */
	struct span *shared = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED)
		die("mmap");
	if (!strcmp(layout, "recycled") && size)
		recycle(size);
	char *a = NULL, *v = NULL;
	if (size) {
		a = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (a == MAP_FAILED)
			die("mmap");
		madvise(a, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	}
	if (nvmas) {
		/* reserve the range, then map every other page of it over the reservation */
		v = mmap(NULL, 2 * nvmas * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (v == MAP_FAILED)
			die("mmap");
		munmap(v, 2 * nvmas * PAGE);
		for (unsigned long i = 0; i < nvmas; i++) {
			char *p = mmap(v + 2 * i * PAGE, PAGE, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (p == MAP_FAILED)
				die("mmap");
			*p = 1;
		}
	}
	start(&t);
	if (size)
		write_pages(a, size, stride, shuffled);
	struct span touch = stop(&t);
	double adj = size ? adjacent(a, size, stride) : 1.0;

	printf("{\"size\": %lu, \"stride\": %lu, \"vmas\": %lu, \"layout\": \"%s\", \"thp\": %d, \"adjacent\": %.4f, ",
	       size, stride, nvmas, layout, thp, adj);
	print_span("touch", touch, ", ");
	printf("\"forks\": [");
	for (unsigned long i = 0; i < forks + (warm ? 1 : 0); i++) {
		start(&t);
		pid_t pid = fork();
		if (pid == 0) {
			struct times c;
			start(&c);
			if (size)
				munmap(a, size);
			if (nvmas)
				munmap(v, 2 * nvmas * PAGE);
			*shared = stop(&c);
			_exit(0);
		}
		struct span f = stop(&t);
		int status;
		if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
			die("fork");
		if (warm && i == 0)
			continue;
		printf("{");
		print_span("fork", f, ", ");
		print_span("exit", *shared, "}");
		printf("%s", i + 1 < forks + (warm ? 1 : 0) ? ", " : "");
	}
	printf("], ");
	start(&t);
	if (size)
		munmap(a, size);
	if (nvmas)
		munmap(v, 2 * nvmas * PAGE);
	print_span("munmap", stop(&t), "}\n");
	return 0;
}
