"""The kbqa web page: static files (index.html, app.js, app.css, i18n.js) served at `/`."""
