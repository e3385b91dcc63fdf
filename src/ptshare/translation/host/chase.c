/* A dependent random pointer chase over a shared memory object: ns per access, per worker.
 *
 * usage: chase SIZE_BYTES HUGE MODE WORKERS ACCESSES SEED [STRIDE]
 *   HUGE     0: 4 KiB pages (memfd), 1: 2 MiB hugetlb pages (memfd, MFD_HUGETLB)
 *   MODE     "proc": WORKERS forked processes, each with its own page tables over the object
 *            "thread": WORKERS threads of one process, one set of page tables
 *   STRIDE   bytes between nodes (default 4096): 4096 puts one node per page, at a pseudo-random
 *            cache line of it; 64 puts one in every cache line (a data footprint of SIZE_BYTES)
 * The nodes are linked in one random cycle, so every access is a load whose address depends on
 * the one before.  Each worker first walks the whole
 * cycle once (its page tables and caches warm), then times ACCESSES loads with its own CPU time
 * (CLOCK_THREAD_CPUTIME_ID: time it was descheduled is not counted) and prints "ns_per_access".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 4U
#endif

static char *base;
static uint64_t pages, accesses, start_stride;
static size_t page_size;  /* the node stride */

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static uint64_t line_of(uint64_t page)
{
	return page_size > 64 ? (page * 0x9e3779b97f4a7c15ULL >> 58) * 64 % page_size : 0;
}

static double chase(uint64_t first)
{
	uint64_t off = first * page_size + line_of(first);
	for (uint64_t i = 0; i < pages; i++)  /* warm: every node once */
		off = *(volatile uint64_t *)(base + off);
	double t0 = now_ns();
	for (uint64_t i = 0; i < accesses; i++)
		off = *(volatile uint64_t *)(base + off);
	double t1 = now_ns();
	if (off == (uint64_t)-1)
		puts("");
	return (t1 - t0) / accesses;
}

static void *thread_main(void *arg)
{
	double ns = chase((uintptr_t)arg);
	printf("%.3f\n", ns);
	fflush(stdout);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 7 && argc != 8) {
		fprintf(stderr, "usage: chase SIZE_BYTES HUGE proc|thread WORKERS ACCESSES SEED [STRIDE]\n");
		return 2;
	}
	uint64_t size = strtoull(argv[1], NULL, 0);
	int huge = atoi(argv[2]);
	int threads = strcmp(argv[3], "thread") == 0;
	int workers = atoi(argv[4]);
	accesses = strtoull(argv[5], NULL, 0);
	uint64_t seed = strtoull(argv[6], NULL, 0);
	page_size = argc == 8 ? strtoull(argv[7], NULL, 0) : 4096;
	if (page_size < 64 || page_size & (page_size - 1) || page_size > 4096) {
		fprintf(stderr, "STRIDE must be a power of two from 64 to 4096\n");
		return 2;
	}
	pages = size / page_size;
	int fd = memfd_create("ptshare-chase", huge ? MFD_HUGETLB : 0);
	if (fd < 0 || ftruncate(fd, size)) {
		perror("memfd");
		return 1;
	}
	base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (base == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	madvise(base, size, MADV_NOHUGEPAGE);
	uint64_t *perm = malloc(pages * sizeof(*perm));
	for (uint64_t i = 0; i < pages; i++)
		perm[i] = i;
	for (uint64_t i = pages - 1; i > 0; i--) {
		uint64_t j = splitmix(&seed) % (i + 1), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (uint64_t i = 0; i < pages; i++) {
		uint64_t p = perm[i], q = perm[(i + 1) % pages];
		*(uint64_t *)(base + p * page_size + line_of(p)) = q * page_size + line_of(q);
	}
	start_stride = pages / (workers ? workers : 1);
	if (threads) {
		pthread_t tid[64];
		for (int w = 0; w < workers && w < 64; w++)
			pthread_create(&tid[w], NULL, thread_main, (void *)(uintptr_t)perm[w * start_stride]);
		for (int w = 0; w < workers && w < 64; w++)
			pthread_join(tid[w], NULL);
		return 0;
	}
	fflush(stdout);
	for (int w = 0; w < workers; w++) {
		if (fork() == 0) {  /* a shared mapping: the child builds its own page tables on first touch */
			printf("%.3f\n", chase(perm[w * start_stride]));
			fflush(stdout);
			_exit(0);
		}
	}
	int status, bad = 0;
	while (wait(&status) > 0)
		bad |= !WIFEXITED(status) || WEXITSTATUS(status);
	return bad;
}
