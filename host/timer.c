/*
** Timers: a binary min-heap of ah_timer on one clock per host: a timerfd
** where there is one, else a uv_timer_t. A uv_timer counts whole
** milliseconds from a loop time that may be a batch of callbacks old, so
** sleep(0.01) lasts 10.0-11.5 ms on it; a timerfd wakes within microseconds
** of the deadline.
*/
#include <math.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif

#include "internal.h"

double ah_now(void) {
  return (double)uv_hrtime() / 1e9;
}

static int timer_before(const ah_timer *a, const ah_timer *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_set(ah_host *h, uint32_t i, ah_timer *t) {
  h->heap[i] = t;
  t->slot = i + 1;
}

static void heap_up(ah_host *h, uint32_t i) {
  ah_timer *t = h->heap[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (!timer_before(t, h->heap[parent])) break;
    heap_set(h, i, h->heap[parent]);
    i = parent;
  }
  heap_set(h, i, t);
}

static void heap_down(ah_host *h, uint32_t i) {
  ah_timer *t = h->heap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= h->nheap) break;
    if (c + 1 < h->nheap && timer_before(h->heap[c + 1], h->heap[c])) c++;
    if (!timer_before(h->heap[c], t)) break;
    heap_set(h, i, h->heap[c]);
    i = c;
  }
  heap_set(h, i, t);
}

static void heap_remove(ah_host *h, ah_timer *t) {
  uint32_t i = t->slot - 1;
  ah_timer *last = h->heap[--h->nheap];
  t->slot = 0;
  if (last == t) return;
  heap_set(h, i, last);
  if (i > 0 && timer_before(last, h->heap[(i - 1) / 2]))
    heap_up(h, i);
  else
    heap_down(h, i);
}

static void on_uv_timer(uv_timer_t *handle);
static void on_timerfd(uv_poll_t *handle, int status, int events);

#ifdef __linux__
/* uv_hrtime() reads CLOCK_MONOTONIC: the deadline is absolute on it. */
static int timerfd_arm(ah_host *h, uint64_t due) {
  struct itimerspec it = {{0, 0}, {0, 0}};
  it.it_value.tv_sec = (time_t)(due / 1000000000u);
  it.it_value.tv_nsec = (long)(due % 1000000000u);
  return timerfd_settime(h->tfd, TFD_TIMER_ABSTIME, &it, NULL);
}
#endif

static void clock_stop(ah_host *h) {
  if (h->tfd >= 0) uv_poll_stop(&h->tpoll);
  uv_timer_stop(&h->timer);
}

static void clock_start(ah_host *h, uint64_t due) {
#ifdef __linux__
  if (h->tfd >= 0) {
    if (timerfd_arm(h, due) == 0) {
      if (!uv_is_active((uv_handle_t *)&h->tpoll))
        uv_poll_start(&h->tpoll, UV_READABLE, on_timerfd);
      return;
    }
    uv_poll_stop(&h->tpoll); /* still readable: it would spin */
  }
#endif
  uint64_t now = uv_hrtime();
  uint64_t ms = due > now ? (due - now + 999999) / 1000000 : 0;
  uv_timer_start(&h->timer, on_uv_timer, ms, 0);
}

/* Points the clock at the earliest deadline, or stops it. */
static void timers_arm(ah_host *h) {
  if (h->nheap == 0) {
    clock_stop(h);
    h->armed = 0;
    return;
  }
  uint64_t due = h->heap[0]->due;
  if (h->armed == due) return;
  h->armed = due;
  clock_start(h, due);
}

static void timers_fire(ah_host *h) {
  uint64_t now = uv_hrtime();
  h->armed = 0;
  while (h->nheap > 0 && h->heap[0]->due <= now) {
    ah_timer *t = h->heap[0];
    heap_remove(h, t);
    t->fn(t);
  }
  timers_arm(h);
}

static void on_uv_timer(uv_timer_t *handle) {
  timers_fire(handle->data);
}

/* No read(): timers_fire re-arms the timerfd, which clears it, or stops
   watching it. */
static void on_timerfd(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  timers_fire(handle->data);
}

void ah_timer_start(ah_host *h, ah_timer *t, double seconds, ah_timer_fn fn) {
  if (t->slot) heap_remove(h, t);
  if (!(seconds > 0)) seconds = 0;
  if (seconds > 1e9) seconds = 1e9; /* ~31 years: forever, without overflow */
  if (h->nheap == h->cheap) {
    uint32_t n = h->cheap ? h->cheap * 2 : 64;
    ah_timer **heap = realloc(h->heap, n * sizeof *heap);
    if (!heap) abort(); /* as libuv does when out of memory */
    h->heap = heap;
    h->cheap = n;
  }
  t->due = uv_hrtime() + (uint64_t)llround(seconds * 1e9);
  t->seq = h->tseq++;
  t->fn = fn;
  h->heap[h->nheap] = t;
  t->slot = ++h->nheap;
  heap_up(h, h->nheap - 1);
  if (t->slot == 1) timers_arm(h);
}

void ah_timer_stop(ah_host *h, ah_timer *t) {
  if (!t->slot) return;
  int first = t->slot == 1;
  heap_remove(h, t);
  if (first) timers_arm(h);
}

int ah_timer_active(const ah_timer *t) {
  return t->slot != 0;
}

int ah__timers_init(ah_host *h) {
  int rc = uv_timer_init(h->loop, &h->timer);
  h->timer.data = h;
  h->tfd = -1;
#ifdef __linux__
  h->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (h->tfd >= 0 && uv_poll_init(h->loop, &h->tpoll, h->tfd) != 0) {
    close(h->tfd);
    h->tfd = -1;
  }
  if (h->tfd >= 0) h->tpoll.data = h;
#endif
  return rc;
}

static void on_timerfd_closed(uv_handle_t *handle) {
  ah_host *h = handle->data;
  close(h->tfd);
  h->tfd = -1;
}

void ah__timers_close(ah_host *h) {
  while (h->nheap > 0) heap_remove(h, h->heap[0]);
  h->armed = 0;
  uv_timer_stop(&h->timer);
  ah_host_close_handle(h, (uv_handle_t *)&h->timer, NULL);
  if (h->tfd >= 0)
    ah_host_close_handle(h, (uv_handle_t *)&h->tpoll, on_timerfd_closed);
  free(h->heap);
  h->heap = NULL;
  h->cheap = 0;
}
