/* pool.c: a small fixed thread pool: the caller and n-1 workers share the parts of one job. */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

struct widen_pool {
    unsigned threads;
    pthread_t *workers;
    pthread_mutex_t lock;
    pthread_cond_t start, finish;
    unsigned long generation;
    void (*fn)(void *user, size_t part);
    void *user;
    size_t parts, next, done;
    int quit;
};

/* Takes parts until none are left; called with the lock held, returns with it held. */
static void work(widen_pool *p)
{
    while (p->next < p->parts) {
        size_t part = p->next++;
        pthread_mutex_unlock(&p->lock);
        p->fn(p->user, part);
        pthread_mutex_lock(&p->lock);
        if (++p->done == p->parts) pthread_cond_signal(&p->finish);
    }
}

static void *worker(void *arg)
{
    widen_pool *p = arg;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->generation == seen && !p->quit) pthread_cond_wait(&p->start, &p->lock);
        if (p->quit) break;
        seen = p->generation;
        work(p);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

widen_pool *widen_pool_new(unsigned threads)
{
    widen_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->threads = threads ? threads : 1;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->finish, NULL);
    p->workers = calloc(p->threads, sizeof *p->workers);
    if (!p->workers) {
        widen_pool_free(p);
        return NULL;
    }
    for (unsigned i = 1; i < p->threads; i++) {
        if (pthread_create(&p->workers[i], NULL, worker, p) != 0) {
            p->threads = i; /* run with the workers that started */
            break;
        }
    }
    return p;
}

void widen_pool_free(widen_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->quit = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 1; p->workers && i < p->threads; i++) pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->finish);
    free(p->workers);
    free(p);
}

unsigned widen_pool_threads(const widen_pool *p)
{
    return p->threads;
}

void widen_pool_run(widen_pool *p, size_t parts, void (*fn)(void *user, size_t part), void *user)
{
    if (p->threads == 1 || parts <= 1) {
        for (size_t i = 0; i < parts; i++) fn(user, i);
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->user = user;
    p->parts = parts;
    p->next = p->done = 0;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    work(p);
    while (p->done < p->parts) pthread_cond_wait(&p->finish, &p->lock);
    pthread_mutex_unlock(&p->lock);
}
