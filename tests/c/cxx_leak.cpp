// C++ names for the demangling test: kmlo::Cache<int>::grow(unsigned long) leaks.
#include <cstdlib>
namespace kmlo {
template <typename T> struct Cache {
    __attribute__((noinline)) void *grow(unsigned long n) { return std::malloc(n * sizeof(T)); }
};
}  // namespace kmlo
void *volatile keep;
int main() {
    kmlo::Cache<int> c;
    keep = c.grow(10);
    return 0;
}
