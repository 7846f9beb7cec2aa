/*
** The asynchost CLI: lua5.4's command line, with the async world.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* The --workers supervisor (host/workers.c). */
int ah_workers_main(int n, int argc, char **argv, int skip, int nskip);

static const char *progname = "asynchost";

static void print_usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] [script [args]]\n"
          "Runs a Lua 5.4 script whose tasks share one event loop: fetch,\n"
          "sleep, db, gather, spawn, timeout, http servers.\n"
          "\n"
          "Options (as lua5.4's):\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter interactive mode after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables\n"
          "  -W        turn warnings on\n"
          "  --workers N  run the script as N worker processes that share\n"
          "            its listening port (a supervisor restarts them)\n"
          "  --max-memory SIZE  cap Lua's memory (bytes, or 512K, 64M, 1G):\n"
          "            a task that needs more fails with 'not enough memory'\n"
          "  --max-cpu SECONDS  fail a task that runs that long without\n"
          "            yielding (a CPU loop) with 'cpu: ...'\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n"
          "  -h, --help  show this help\n"
          "\n"
          "Examples:\n"
          "  %s crawl.lua https://example.com/\n"
          "  %s -e 'print(gather({1, 2, 3}, function(x) sleep(0.1) return x * "
          "2 end)[3])'\n"
          "  %s /usr/bin/busted spec\n"
          "\n"
          "Docs: README.md and docs/ in the source tree; man asynchost.\n",
          progname, progname, progname, progname);
}

static void print_version(void) {
  printf("asynchost %s (%s, libuv %s)\n", AH_VERSION, LUA_RELEASE,
         uv_version_string());
}

typedef struct cli {
  int script; /* index of the script in argv, 0 if none */
  int interactive, version, ignore_env, warnings, exec;
  int nactions;
  int workers, workers_at, workers_len; /* --workers N and where it is */
  size_t max_memory;                    /* 0: none */
  double max_cpu;                       /* 0: none */
} cli;

static int usage_error(const char *msg, const char *opt) {
  fprintf(stderr, "%s: %s '%s'\n", progname, msg, opt);
  print_usage(stderr);
  return -1;
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]: the value, or NULL if
   the option is another one. Moves *i past a separate value. */
static const char *long_value(int argc, char **argv, int *i, const char *name) {
  const char *a = argv[*i];
  size_t n = strlen(name);
  if (strncmp(a, name, n) != 0) return NULL;
  if (a[n] == '=') return a + n + 1;
  if (a[n] != '\0') return NULL;
  if (*i + 1 >= argc) return "";
  return argv[++*i];
}

/* "4096", "512K", "64M", "1.5G" (powers of 1024, an optional B or iB) */
static int parse_size(const char *v, size_t *out) {
  char *end;
  double n = strtod(v, &end), unit = 1;
  if (end == v || !(n > 0)) return 0;
  switch (*end) {
  case 'k':
  case 'K':
    unit = 1024.0;
    end++;
    break;
  case 'm':
  case 'M':
    unit = 1024.0 * 1024;
    end++;
    break;
  case 'g':
  case 'G':
    unit = 1024.0 * 1024 * 1024;
    end++;
    break;
  case 't':
  case 'T':
    unit = 1024.0 * 1024 * 1024 * 1024;
    end++;
    break;
  }
  if (unit > 1 && *end == 'i') end++;
  if (*end == 'b' || *end == 'B') end++;
  if (*end || n * unit < 1 || n * unit > (double)SIZE_MAX / 2) return 0;
  *out = (size_t)(n * unit);
  return 1;
}

static int parse_seconds(const char *v, double *out) {
  char *end;
  double s = strtod(v, &end);
  if (end == v || *end || !(s > 0) || s > 1e6) return 0;
  *out = s;
  return 1;
}

/* --max-memory and --max-cpu: 1 if argv[*i] is one, -1 if its value is
   bad, 0 if it is another option. */
static int parse_limit(int argc, char **argv, int *i, cli *c) {
  const char *v;
  if ((v = long_value(argc, argv, i, "--max-memory")) != NULL)
    return parse_size(v, &c->max_memory)
               ? 1
               : usage_error("'--max-memory' needs a size such as 64M or 1G "
                             "(bytes, or K, M, G), not",
                             v);
  if ((v = long_value(argc, argv, i, "--max-cpu")) != NULL)
    return parse_seconds(v, &c->max_cpu)
               ? 1
               : usage_error("'--max-cpu' needs a number of seconds > 0, not",
                             v);
  return 0;
}

/* Scans options as lua.c does; returns -1 on a bad one, 1 for --help. */
static int parse_args(int argc, char **argv, cli *c) {
  int i, rc;
  memset(c, 0, sizeof *c);
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-') {
      c->script = i;
      return 0;
    }
    if (strcmp(a, "-") == 0) {
      c->script = i;
      return 0;
    }
    if (strcmp(a, "--") == 0) {
      if (i + 1 < argc) c->script = i + 1;
      return 0;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) return 1;
    if ((rc = parse_limit(argc, argv, &i, c)) != 0) {
      if (rc < 0) return -1;
      continue;
    }
    if (strncmp(a, "--workers", 9) == 0 && (a[9] == '\0' || a[9] == '=')) {
      const char *v = a[9] ? a + 10 : i + 1 < argc ? argv[i + 1] : "";
      char *end;
      long n = strtol(v, &end, 10);
      if (!*v || *end || n < 1 || n > 1024)
        return usage_error("'--workers' needs a number from 1 to 1024", a);
      c->workers = (int)n;
      c->workers_at = i;
      c->workers_len = a[9] ? 1 : 2;
      i += c->workers_len - 1;
      continue;
    }
    switch (a[1]) {
    case 'i':
      if (a[2]) return usage_error("unrecognized option", a);
      c->interactive = c->version = 1;
      break;
    case 'v':
      if (a[2]) return usage_error("unrecognized option", a);
      c->version = 1;
      break;
    case 'E':
      if (a[2]) return usage_error("unrecognized option", a);
      c->ignore_env = 1;
      break;
    case 'W':
      if (a[2]) return usage_error("unrecognized option", a);
      c->warnings = 1;
      break;
    case 'e':
    case 'l':
      c->exec = 1;
      c->nactions++;
      if (a[2] == '\0') {
        if (++i >= argc || argv[i][0] == '-')
          return usage_error(a[1] == 'e' ? "'-e' needs an argument"
                                         : "'-l' needs an argument",
                             a);
      }
      break;
    default:
      return usage_error("unrecognized option", a);
    }
  }
  return 0;
}

/* Builds the global `arg` and the cfg table for lua/cli.lua. */
static void push_cfg(lua_State *L, int argc, char **argv, const cli *c) {
  int i, n = 0, script = c->script ? c->script : argc;
  lua_createtable(L, argc, 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
  lua_newtable(L); /* cfg */
  lua_newtable(L); /* actions */
  for (i = 1; i < script; i++) {
    const char *a = argv[i];
    if (a[0] == '-' && (a[1] == 'e' || a[1] == 'l')) {
      lua_createtable(L, 2, 0);
      lua_pushlstring(L, a + 1, 1);
      lua_rawseti(L, -2, 1);
      lua_pushstring(L, a[2] ? a + 2 : argv[++i]);
      lua_rawseti(L, -2, 2);
      lua_rawseti(L, -2, ++n);
    }
  }
  lua_setfield(L, -2, "actions");
  if (c->script) {
    lua_pushstring(L, argv[c->script]);
    lua_setfield(L, -2, "script");
  } else if (!c->exec && !c->version) {
    if (isatty(0)) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "interactive");
      lua_pushfstring(L, "asynchost %s (%s), async REPL: try gather, sleep",
                      AH_VERSION, LUA_RELEASE);
      lua_setfield(L, -2, "banner");
    } else {
      lua_pushliteral(L, "-");
      lua_setfield(L, -2, "script");
    }
  }
  lua_createtable(L, argc, 1);
  for (i = script + 1, n = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, ++n);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  lua_setfield(L, -2, "args");
  if (c->interactive) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "interactive");
  }
  lua_pushboolean(L, c->ignore_env);
  lua_setfield(L, -2, "ignore_env");
  lua_pushboolean(L, c->warnings);
  lua_setfield(L, -2, "warnings");
}

int main(int argc, char **argv) {
  ah_options opts = {0};
  ah_host *h;
  lua_State *L;
  cli c;
  int status, rc;
  if (argv[0] && argv[0][0]) progname = "asynchost";
  rc = parse_args(argc, argv, &c);
  if (rc < 0) return 1;
  if (rc > 0) {
    print_usage(stdout);
    return 0;
  }
  if (c.workers) {
    if (!c.script) {
      usage_error("'--workers' needs a script", "--workers");
      return 1;
    }
    return ah_workers_main(c.workers, argc, argv, c.workers_at, c.workers_len);
  }
  if (c.version) print_version();
  opts.globals = 1;
  opts.signals = 1;
  h = ah_host_new(&opts);
  if (!h) {
    fprintf(stderr, "%s: cannot create the host (out of memory)\n", progname);
    return 1;
  }
  ah_host_set_memory_limit(h, c.max_memory);
  ah_host_set_cpu_limit(h, c.max_cpu);
  L = ah_host_lua(h);
  if (ah__load_lua(L, "cli") != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    ah_host_free(h);
    return 1;
  }
  push_cfg(L, argc, argv, &c);
  ah_host_spawn_call(h, 1, NULL, NULL, NULL);
  status = ah_host_run(h);
  if (h->exiting && !h->exit_close) { /* os.exit without close, as Lua's */
    fflush(NULL);
    exit(status);
  }
  ah_host_free(h);
  return status;
}
