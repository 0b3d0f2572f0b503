"""The operations console: server-rendered pages at ``/console`` over the API's services and
authorization (docs/console.md). ``mount.install_console`` adds it to an app."""
