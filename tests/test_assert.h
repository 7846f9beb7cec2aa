/* The C tests' assertions: each failure names file, line and values. */
#ifndef TEST_ASSERT_H
#define TEST_ASSERT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT(c)                                                              \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__,     \
              #c);                                                             \
      abort();                                                                 \
    }                                                                          \
  } while (0)
#define ASSERT_INT(a, b)                                                       \
  do {                                                                         \
    long long a_ = (long long)(a), b_ = (long long)(b);                        \
    if (a_ != b_) {                                                            \
      fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,    \
              __LINE__, #a, a_, #b, b_);                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)
#define ASSERT_HAS(s, sub)                                                     \
  do {                                                                         \
    const char *s_ = (s);                                                      \
    if (!s_ || !strstr(s_, (sub))) {                                           \
      fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__,     \
              __LINE__, s_ ? s_ : "(null)", (sub));                            \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#endif
