"""``station-console``: the officer's and field engineer's web UI on loopback (``daemon``),
its HTTP side (``web``), its side of the station bus (``bridge``), local accounts
(``accounts``), banners (``banners``), the page (``static/``) and its catalogs (``i18n/``)."""
