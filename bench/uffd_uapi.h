// The parts of <linux/userfaultfd.h> newer than the kernel headers Debian Bookworm ships (6.1):
// feature bits and the UFFDIO_MOVE and UFFDIO_POISON ioctls, with the values and layouts of
// include/uapi/linux/userfaultfd.h (6.8+). Each is defined only where the headers lack it.
#pragma once

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
  __u64 mode;
  __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
struct uffdio_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
