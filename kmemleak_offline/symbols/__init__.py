"""Address -> name: kernel (kallsyms snapshot rows) and user space (ELF files, embedded usym rows)."""
