/*
** asynchost --workers N script.lua [args]: a supervisor that runs the
** script as N worker processes sharing the script's listening port
** (each server listens with SO_REUSEPORT when ASYNCHOST_WORKER is set).
**
** The supervisor has no Lua state. It starts the workers with uv_spawn of
** /proc/self/exe (no fork after start-up), the same arguments minus
** --workers and ASYNCHOST_WORKER=1..N in their environment; restarts a
** worker that dies unexpectedly (with a backoff, giving up on one that
** keeps failing at once); forwards SIGTERM/SIGINT to all of them and waits
** while they drain. Workers run in their own session, so a Ctrl-C on the
** terminal reaches them once, through the supervisor. Exit status as a
** single asynchost's: 0 after SIGTERM (1 if a worker failed while
** stopping), 130 after SIGINT; a second signal is forwarded and the
** supervisor exits at once. Workers that all end by themselves end the
** supervisor with the worst of their statuses.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#define QUICK_MS 1000    /* a worker that dies sooner failed at start */
#define MAX_QUICK 5      /* ... this many times in a row: give up */
#define MAX_BACKOFF 5000 /* ms */

extern char **environ;

typedef struct worker {
  uv_process_t proc;
  uv_timer_t restart;
  struct supervisor *sup;
  int index; /* 1..N, its ASYNCHOST_WORKER */
  int running, closing;
  int quick; /* quick failures in a row */
  uint64_t started;
} worker;

typedef struct supervisor {
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  worker *w;
  int n, running;
  char **argv;  /* the workers' arguments */
  char **env;   /* environ minus ASYNCHOST_WORKER, plus one slot */
  int stopping; /* the signal that stops us, or -1 when giving up */
  int status;   /* the exit status so far */
} supervisor;

static void on_worker_exit(uv_process_t *proc, int64_t status, int sig);
static void on_proc_closed(uv_handle_t *handle);

static int spawn_worker(supervisor *s, worker *w) {
  uv_process_options_t o;
  uv_stdio_container_t stdio[3];
  char var[40];
  int nenv = 0, rc;
  while (s->env[nenv]) nenv++;
  snprintf(var, sizeof var, "ASYNCHOST_WORKER=%d", w->index);
  s->env[nenv] = var; /* the slot after the inherited variables */
  memset(&o, 0, sizeof o);
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  o.file = "/proc/self/exe";
  o.args = s->argv;
  o.env = s->env;
  o.exit_cb = on_worker_exit;
  o.flags = UV_PROCESS_DETACHED; /* its own session: signals come from us */
  o.stdio = stdio;
  o.stdio_count = 3;
  w->proc.data = w;
  rc = uv_spawn(&s->loop, &w->proc, &o);
  s->env[nenv] = NULL;
  if (rc != 0) {
    fprintf(stderr, "asynchost: cannot start worker %d: %s\n", w->index,
            uv_strerror(rc));
    w->closing = 1;
    uv_close((uv_handle_t *)&w->proc, on_proc_closed);
    return rc;
  }
  w->running = 1;
  w->closing = 1; /* the handle must be closed before the next spawn */
  w->started = uv_now(&s->loop);
  s->running++;
  return 0;
}

static void finish(supervisor *s) {
  int i;
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  for (i = 0; i < s->n; i++) {
    uv_timer_stop(&s->w[i].restart);
    if (!uv_is_closing((uv_handle_t *)&s->w[i].restart))
      uv_close((uv_handle_t *)&s->w[i].restart, NULL);
  }
}

static void stop_all(supervisor *s, int sig) {
  int i;
  for (i = 0; i < s->n; i++) {
    uv_timer_stop(&s->w[i].restart);
    if (s->w[i].running) uv_process_kill(&s->w[i].proc, sig);
  }
  if (s->running == 0) finish(s);
}

static void on_restart(uv_timer_t *timer) {
  worker *w = timer->data;
  supervisor *s = w->sup;
  if (s->stopping) return;
  if (w->closing) { /* the old handle is not closed yet: soon */
    uv_timer_start(&w->restart, on_restart, 10, 0);
    return;
  }
  if (spawn_worker(s, w) != 0) {
    w->quick++;
    uv_timer_start(&w->restart, on_restart, MAX_BACKOFF, 0);
  }
}

static void on_proc_closed(uv_handle_t *handle) {
  ((worker *)handle->data)->closing = 0;
}

static void on_worker_exit(uv_process_t *proc, int64_t status, int sig) {
  worker *w = proc->data;
  supervisor *s = w->sup;
  uint64_t lived = uv_now(&s->loop) - w->started;
  int code = sig ? 128 + sig : (int)status;
  w->running = 0;
  s->running--;
  uv_close((uv_handle_t *)proc, on_proc_closed);
  if (s->stopping) {
    /* SIGINT's 130 is expected; anything else but 0 is a failure */
    if (code != 0 && !(s->stopping == SIGINT && code == 130) && s->status == 0)
      s->status = 1;
    if (s->running == 0) finish(s);
    return;
  }
  if (code == 0) { /* the script ended by itself */
    if (s->running == 0) finish(s);
    return;
  }
  w->quick = lived < QUICK_MS ? w->quick + 1 : 0;
  if (w->quick >= MAX_QUICK) {
    fprintf(stderr,
            "asynchost: worker %d failed %d times in a row at start; "
            "stopping\n",
            w->index, w->quick);
    s->status = code;
    s->stopping = -1;
    stop_all(s, SIGTERM);
    return;
  }
  {
    uint64_t delay = 100u << (w->quick < 6 ? w->quick : 6);
    if (delay > MAX_BACKOFF) delay = MAX_BACKOFF;
    if (sig)
      fprintf(stderr,
              "asynchost: worker %d (pid %d) was killed by signal %d; "
              "restarting it in %.1f s\n",
              w->index, proc->pid, sig, (double)delay / 1000);
    else
      fprintf(stderr,
              "asynchost: worker %d (pid %d) exited with status %d; "
              "restarting it in %.1f s\n",
              w->index, proc->pid, (int)status, (double)delay / 1000);
    uv_timer_start(&w->restart, on_restart, delay, 0);
  }
}

static void on_signal(uv_signal_t *handle, int signum) {
  supervisor *s = handle->data;
  int i;
  if (s->stopping) { /* a second signal: the workers stop now, so do we */
    for (i = 0; i < s->n; i++)
      if (s->w[i].running) uv_process_kill(&s->w[i].proc, signum);
    fprintf(stderr, "asynchost: %s again, exiting now\n",
            signum == SIGINT ? "interrupted" : "terminated");
    _exit(128 + signum);
  }
  s->stopping = signum;
  s->status = signum == SIGINT ? 130 : 0;
  stop_all(s, signum);
}

/* The workers' environment: ours without ASYNCHOST_WORKER, and a slot. */
static char **worker_env(void) {
  int n = 0, i, j = 0;
  char **env;
  while (environ[n]) n++;
  env = calloc((size_t)n + 2, sizeof *env);
  if (!env) return NULL;
  for (i = 0; i < n; i++)
    if (strncmp(environ[i], "ASYNCHOST_WORKER=", 17) != 0)
      env[j++] = environ[i];
  return env;
}

/* Runs the supervisor; argv[skip .. skip+nskip-1] are the --workers
   option and its value, left out of the workers' arguments. Returns the
   exit status. */
int ah_workers_main(int n, int argc, char **argv, int skip, int nskip) {
  supervisor s;
  int i, j = 0;
  memset(&s, 0, sizeof s);
  signal(SIGPIPE, SIG_IGN);
  s.n = n;
  s.w = calloc((size_t)n, sizeof *s.w);
  s.argv = calloc((size_t)argc + 1, sizeof *s.argv);
  s.env = worker_env();
  if (!s.w || !s.argv || !s.env || uv_loop_init(&s.loop) != 0) {
    fprintf(stderr, "asynchost: cannot start the supervisor\n");
    return 1;
  }
  for (i = 0; i < argc; i++)
    if (i < skip || i >= skip + nskip) s.argv[j++] = argv[i];
  uv_signal_init(&s.loop, &s.sigint);
  uv_signal_init(&s.loop, &s.sigterm);
  s.sigint.data = s.sigterm.data = &s;
  uv_signal_start(&s.sigint, on_signal, SIGINT);
  uv_signal_start(&s.sigterm, on_signal, SIGTERM);
  for (i = 0; i < n; i++) {
    worker *w = &s.w[i];
    w->sup = &s;
    w->index = i + 1;
    uv_timer_init(&s.loop, &w->restart);
    w->restart.data = w;
  }
  for (i = 0; i < n; i++)
    if (spawn_worker(&s, &s.w[i]) != 0) {
      s.status = 1;
      s.stopping = -1;
      stop_all(&s, SIGTERM);
      break;
    }
  uv_run(&s.loop, UV_RUN_DEFAULT);
  uv_loop_close(&s.loop);
  free(s.w);
  free(s.argv);
  free(s.env);
  return s.status;
}
