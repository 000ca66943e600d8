"""Address -> name: kernel symbols (kallsyms snapshot rows), the machine (threads and processes
over time: comms, maps), user-space DSOs and their symbol tables, and call chains -> frames."""
