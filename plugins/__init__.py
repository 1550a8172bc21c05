"""Built-in plugins; each module is an ordinary plugin (see cacheorch.pluginmanager.DEFAULT_PLUGINS)."""
