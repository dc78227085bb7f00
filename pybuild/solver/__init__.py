"""The solver side of a build: walks stages, applies steps (RUN, COPY/ADD) and caches them."""
