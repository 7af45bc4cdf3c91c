/* nonewprivs' helper: installed setuid root, it prints the uid it runs with (0 unless no_new_privs is set). */
#include <stdio.h>
#include <unistd.h>

int main(void) {
  printf("Effective uid: %d\n", (int)geteuid());
  return 0;
}
