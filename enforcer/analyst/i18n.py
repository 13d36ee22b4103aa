"""The dashboard in both official languages: language choice, the page's texts in English and Canadian French.

- ``LANGS``: ``en``, ``fr``; ``DEFAULT_LANG``: ``en``.
- ``negotiate(query, accept_language)``: ``?lang=`` when it names a supported language (``fr``, ``fr-CA``), else the
  ``Accept-Language`` entry with the highest q-value (RFC 9110: ``q=0`` means "not this one"; equal q-values keep
  the header's order) whose primary tag is supported, else English.
- ``MESSAGES``: key -> {lang: text}; ``page_texts(lang)`` the texts of the HTML template, ``script_texts(lang)``
  those the script needs (sent in the page as a JSON data block, not executed: the CSP allows no inline script).
- ``render(template, lang)``: the template with ``{{key}}`` replaced by the HTML-escaped text, ``{{lang}}`` by the
  language and ``{{i18n_json}}`` by the script's texts (``<``, ``>`` and ``&`` escaped so that no text can close
  the block).
Typography of the French texts follows Canadian usage (Office québécois de la langue française): a no-break space
before the colon, none before ``;``, ``?`` and ``!``.
"""

from __future__ import annotations

import html
import json
import re

LANGS = ("en", "fr")
DEFAULT_LANG = "en"
_NBSP = "\u00a0"
MAX_ACCEPT_ENTRIES = 32  # of an Accept-Language header read (a longer one is cut, not an error)
_PLACEHOLDER = re.compile(r"\{\{([a-z0-9_]+)\}\}")

# The template's and the script's texts. Keys used only by the script start with "js_".
MESSAGES: dict[str, dict[str, str]] = {
    "title": {"en": "enforcer · compliance review", "fr": "enforcer · examen de la conformité"},
    "heading": {"en": "Compliance review", "fr": "Examen de la conformité"},
    "subtitle": {
        "en": "WeChat and Kaspersky ban: attempts seen by the resolver and the proxy",
        "fr": "Interdiction de WeChat et de Kaspersky : tentatives vues par le résolveur et le mandataire",
    },
    "logout": {"en": "Log out", "fr": "Se déconnecter"},
    "login": {"en": "Log in", "fr": "Ouvrir une session"},
    "login_help": {
        "en": "This service needs its access token (a line of the analyst's --token-file).",
        "fr": "Ce service demande son jeton d'accès (une ligne du fichier --token-file de l'analyste).",
    },
    "token": {"en": "Token", "fr": "Jeton"},
    "lang_switch": {"en": "Français", "fr": "English"},
    "lang_other": {"en": "fr", "fr": "en"},
    "app": {"en": "App", "fr": "Application"},
    "category": {"en": "Category", "fr": "Catégorie"},
    "component": {"en": "Component", "fr": "Composant"},
    "since": {"en": "Since", "fr": "Depuis"},
    "until": {"en": "Until", "fr": "Jusqu'à"},
    "all": {"en": "all", "fr": "toutes"},
    "search": {"en": "Search", "fr": "Rechercher"},
    "search_placeholder": {"en": "name, rule or device", "fr": "nom, règle ou appareil"},
    "apply": {"en": "Apply", "fr": "Appliquer"},
    "export_csv": {"en": "Export CSV", "fr": "Exporter en CSV"},
    # Raw hits, not attempts (bursts): a burst can span buckets and rules, so only the cards and the device tables
    # count attempts.
    "chart_title": {"en": "Hits per app over time", "fr": "Occurrences par application dans le temps"},
    "chart_label": {"en": "hits per app over time", "fr": "occurrences par application dans le temps"},
    "nc_title": {"en": "Non-compliant devices", "fr": "Appareils non conformes"},
    "nc_help": {
        "en": "Clients with attempts after the app's effective date that the policy enforced (blocked). "
        "Select a row to list its events.",
        "fr": "Clients ayant fait des tentatives après la date d'entrée en vigueur de l'application, bloquées par "
        "la politique. Choisissez une ligne pour en voir les événements.",
    },
    "device": {"en": "Device", "fr": "Appareil"},
    "owner": {"en": "Owner", "fr": "Responsable"},
    "unit": {"en": "Unit", "fr": "Unité"},
    "client": {"en": "Client", "fr": "Client"},
    "first_seen": {"en": "First seen", "fr": "Vu la première fois"},
    "last_seen": {"en": "Last seen", "fr": "Vu la dernière fois"},
    "attempts": {"en": "Attempts", "fr": "Tentatives"},
    "enforced": {"en": "Enforced", "fr": "Bloquées"},
    "events_of": {"en": "Events of", "fr": "Événements de"},
    "close": {"en": "close", "fr": "fermer"},
    "time": {"en": "Time", "fr": "Heure"},
    "decision": {"en": "Decision", "fr": "Décision"},
    "action": {"en": "Action", "fr": "Action"},
    "rule": {"en": "Rule", "fr": "Règle"},
    "name_url": {"en": "Name / URL", "fr": "Nom / URL"},
    "load_more": {"en": "Load more", "fr": "Afficher plus"},
    "top_rules": {"en": "Top rules", "fr": "Règles les plus touchées"},
    "clients": {"en": "Clients", "fr": "Clients"},
    "now_title": {"en": "Non-compliant clients now", "fr": "Clients non conformes en ce moment"},
    "now_help": {
        "en": "Clients with an enforced attempt in the last hour, day and week (also on /metrics).",
        "fr": "Clients ayant fait une tentative bloquée dans la dernière heure, journée et semaine "
        "(aussi dans /metrics).",
    },
    "cases_title": {"en": "Cases", "fr": "Dossiers"},
    "cases_help": {
        "en": "Each non-compliant device is a case: open, then acknowledged, then remediated. A remediated device "
        "that tries again reopens its case.",
        "fr": "Chaque appareil non conforme fait l'objet d'un dossier : ouvert, puis pris en charge, puis corrigé. "
        "Un appareil corrigé qui fait une nouvelle tentative rouvre son dossier.",
    },
    "state": {"en": "State", "fr": "État"},
    "updated": {"en": "Updated", "fr": "Mis à jour"},
    "by": {"en": "By", "fr": "Par"},
    "note": {"en": "Note", "fr": "Note"},
    "why": {"en": "Why", "fr": "Motif"},
    "export_cases": {"en": "Export cases (CSV)", "fr": "Exporter les dossiers (CSV)"},
    "policy_title": {"en": "Policy notice", "fr": "Avis de la politique"},
    "identity": {"en": "Identified by", "fr": "Identifié par"},
    "hits": {"en": "Hits", "fr": "Occurrences"},
    "bypass_title": {"en": "Bypass attempts", "fr": "Tentatives de contournement"},
    "bypass_help": {
        "en": "Devices that tried to get around the network's protections (public encrypted DNS resolvers, iCloud "
        "Private Relay: the control rules, kind: control). Blocked and counted here, apart from the ban: a bypass "
        "attempt never makes a device non-compliant.",
        "fr": "Appareils qui ont tenté de contourner les protections du réseau (résolveurs DNS chiffrés publics, "
        "relais privé iCloud : les règles de contrôle, kind: control). Bloquées et comptées ici, à part de "
        "l'interdiction : une tentative de contournement ne rend jamais un appareil non conforme.",
    },
    "bypass_control": {"en": "Control", "fr": "Contrôle"},
    "js_no_bypass": {
        "en": "No bypass attempt for these filters.",
        "fr": "Aucune tentative de contournement pour ces filtres.",
    },
    "js_cards_attempts": {"en": "Attempts", "fr": "Tentatives"},
    "js_cards_enforced": {"en": "Enforced attempts", "fr": "Tentatives bloquées"},
    # Devices (identities), as the tables below them count: dashboard totals "clients" and "noncompliant_clients"
    "js_cards_clients": {"en": "Devices", "fr": "Appareils"},
    "js_cards_noncompliant": {"en": "Non-compliant devices", "fr": "Appareils non conformes"},
    "js_no_events": {"en": "no events for these filters", "fr": "aucun événement pour ces filtres"},
    "cand_title": {"en": "Candidates (proposed rules)", "fr": "Candidats (règles proposées)"},
    "cand_help": {
        "en": "Names that look like a banned app but matched no rule (last 7 days). Review each, then add it to a "
        "blocklist yourself; nothing here is applied.",
        "fr": "Noms qui ressemblent à une application interdite sans correspondre à une règle (7 derniers jours). "
        "Examinez chacun, puis ajoutez-le vous-même à une liste; rien ici n'est appliqué.",
    },
    "cand_rule": {"en": "Proposed rule", "fr": "Règle proposée"},
    "cand_confidence": {"en": "Confidence", "fr": "Confiance"},
    "cand_signals": {"en": "Evidence", "fr": "Indices"},
    "cand_queries": {"en": "Seen", "fr": "Vus"},
    "js_no_candidates": {"en": "No candidates.", "fr": "Aucun candidat."},
    "js_cooc_on": {
        "en": "Co-occurrence (names the clients of blocked queries also ask for, within seconds): from {n} query "
        "log file(s).",
        "fr": "Cooccurrence (noms que les clients des requêtes bloquées demandent aussi, à quelques secondes "
        "près) : d'après {n} fichier(s) de journal des requêtes.",
    },
    "js_cooc_off": {
        "en": "Co-occurrence needs the resolver's query log (enforcer dns --query-log, then enforcer analyst "
        "--query-log).",
        "fr": "La cooccurrence demande le journal des requêtes du résolveur (enforcer dns --query-log, puis "
        "enforcer analyst --query-log).",
    },
    "js_no_noncompliant": {
        "en": "No non-compliant device for these filters.",
        "fr": "Aucun appareil non conforme pour ces filtres.",
    },
    "js_no_cases": {"en": "No case.", "fr": "Aucun dossier."},
    "js_no_rules": {"en": "No hit for these filters.", "fr": "Aucune occurrence pour ces filtres."},
    "js_first_shown": {"en": "first {n} shown", "fr": "{n} premiers affichés"},
    "js_per": {"en": "per", "fr": "par"},
    "js_minute": {"en": "{n} min", "fr": "{n} min"},
    "js_hour": {"en": "hour", "fr": "heure"},
    "js_day": {"en": "day", "fr": "jour"},
    "js_attempts_n": {"en": "{n} attempt(s)", "fr": "{n} tentative(s)"},
    "js_loading": {"en": "loading…", "fr": "chargement…"},
    "js_updated": {
        "en": "updated {ts} · {n} events stored",
        "fr": "mis à jour {ts} · {n} événements enregistrés",
    },
    "js_error": {"en": "Error: {msg}", "fr": f"Erreur{_NBSP}: {{msg}}"},
    "js_bad_token": {"en": "That token was not accepted.", "fr": "Ce jeton n'a pas été accepté."},
    "js_denied": {"en": "denied", "fr": "refusé"},
    "js_allowed": {"en": "allowed", "fr": "permis"},
    # The identity sources (identity.SOURCES, and cases.LEGACY): the API's values in English.
    "js_ident_client-id": {"en": "client-id", "fr": "ClientID"},
    "js_ident_lease": {"en": "lease", "fr": "bail DHCP"},
    "js_ident_proxy-user": {"en": "proxy-user", "fr": "utilisateur du mandataire"},
    "js_ident_cidr": {"en": "cidr", "fr": "plage d'adresses"},
    "js_ident_address": {"en": "address", "fr": "adresse"},
    "js_ident_legacy": {"en": "legacy", "fr": "ancien"},
    "js_state_open": {"en": "open", "fr": "ouvert"},
    "js_state_acknowledged": {"en": "acknowledged", "fr": "pris en charge"},
    "js_state_remediated": {"en": "remediated", "fr": "corrigé"},
    "js_acknowledge": {"en": "Acknowledge", "fr": "Prendre en charge"},
    "js_remediate": {"en": "Mark remediated", "fr": "Marquer corrigé"},
    "js_add_note": {"en": "Add note", "fr": "Ajouter la note"},
    "js_note_prompt": {"en": "Note (what was done):", "fr": f"Note (ce qui a été fait){_NBSP}:"},
    "js_reopened": {
        "en": "reopened: {client} tried {app} ({name}, rule {rule}) at {ts}",
        "fr": "rouvert : {client} a tenté {app} ({name}, règle {rule}) à {ts}",
    },
    "js_retention_all": {
        "en": "Retention: every event is kept (no --retention).",
        "fr": f"Conservation{_NBSP}: tous les événements sont gardés (pas de --retention).",
    },
    "js_retention": {
        "en": "Retention: events older than {period} are deleted, and closed cases with them.",
        "fr": f"Conservation{_NBSP}: les événements de plus de {{period}} sont supprimés, ainsi que les dossiers "
        "fermés.",
    },
    "js_days": {"en": "{n} days", "fr": "{n} jours"},
    "js_hours": {"en": "{n} hours", "fr": "{n} heures"},
}
# French colons in the texts above written with a plain space get the no-break space here, once.
for _texts in MESSAGES.values():
    _texts["fr"] = _texts["fr"].replace(" :", _NBSP + ":")


def primary(tag: str) -> str:
    return tag.strip().split("-", 1)[0].split("_", 1)[0].lower()


def negotiate(query: str | None, accept_language: str | None) -> str:
    """The page's language: ``?lang=`` if supported, else the best supported ``Accept-Language`` entry, else en."""
    if query and primary(query) in LANGS:
        return primary(query)
    best: tuple[float, int, str] | None = None
    for i, part in enumerate((accept_language or "").split(",")[:MAX_ACCEPT_ENTRIES]):
        tag, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        lang = primary(tag)
        if lang == "*":
            lang = DEFAULT_LANG
        if q <= 0 or lang not in LANGS:
            continue
        if best is None or (-q, i) < (-best[0], best[1]):
            best = (q, i, lang)
    return best[2] if best else DEFAULT_LANG


def text(key: str, lang: str) -> str:
    texts = MESSAGES[key]
    return texts.get(lang) or texts[DEFAULT_LANG]


def script_texts(lang: str) -> dict[str, str]:
    return {key[3:]: text(key, lang) for key in MESSAGES if key.startswith("js_")}


def render(template: str, lang: str) -> str:
    blob = json.dumps(script_texts(lang), ensure_ascii=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "lang":
            return lang
        if key == "i18n_json":
            return blob
        return html.escape(text(key, lang))

    return _PLACEHOLDER.sub(one, template)
