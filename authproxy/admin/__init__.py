"""The admin listener: the web app (``web``), its status page (``page``), its host and token gate
(``gate``), the status view, the ``authproxy status`` client (``statusclient``), the text both show
(``humanize``), and the supervisor's fleet-wide admin (``fleet``).

Above the runtime, whose state it shows. May import ``runtime``, ``ops`` and below; the supervisor it
serves is seen only through the ``FleetView`` protocol, never imported.
"""
