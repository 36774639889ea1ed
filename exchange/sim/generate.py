"""Realistic, valid records for the four datasets, and faulty variants of them (pure, seeded).

``Generator(seed)`` draws from one ``random.Random``: the same seed and ``today`` give the same
records. Cross-dataset references resolve: taxpayers' personal ids, land owners and vehicle
owners are ids of generated people (or MSTs of generated organisations).

    gen = Generator(7, today=date(2026, 11, 22))
    people = gen.population(1000)
    taxpayers = gen.tax(200, people)
    parcels = gen.land(300, people, taxpayers)
    vehicles = gen.vehicle(300, people, taxpayers)
    bad = fault(people[0], "bad_id")
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import random
import unicodedata
from collections.abc import Sequence
from typing import Any

from exchange.core.datasets import admin_units

__all__ = ["FAULTS", "Generator", "dataset_of", "fault", "fault_kinds", "mst_check_digit"]

Record = dict[str, Any]

# Surnames with their approximate shares (Lê Trung Hoa, Họ và tên người Việt Nam, 2005: Nguyễn
# ~38%, Trần 11%, Lê 9.5%, Phạm 7%, ...).
_SURNAMES = (
    ("Nguyễn", 380), ("Trần", 110), ("Lê", 95), ("Phạm", 70), ("Hoàng", 40), ("Huỳnh", 15),
    ("Phan", 45), ("Vũ", 30), ("Võ", 10), ("Đặng", 21), ("Bùi", 20), ("Đỗ", 14), ("Hồ", 13),
    ("Ngô", 13), ("Dương", 10), ("Lý", 5), ("Đinh", 8), ("Trương", 7), ("Lâm", 5), ("Mai", 5),
    ("Đoàn", 5), ("Trịnh", 5), ("Lương", 4), ("Cao", 4), ("Tạ", 3), ("Hà", 4), ("Kiều", 2),
)
_MIDDLE = {
    "male": ("Văn", "Văn", "Văn", "Hữu", "Đức", "Minh", "Quốc", "Thanh", "Công", "Xuân", "Ngọc",
             "Trọng", "Quang", "Gia", "Hoàng", "Tuấn", "Mạnh", "Đình"),
    "female": ("Thị", "Thị", "Thị", "Thị", "Ngọc", "Thu", "Thanh", "Minh", "Thùy", "Kim", "Mai",
               "Phương", "Hồng", "Bích", "Diệu", "Khánh", "Bảo", "Hải"),
}
_GIVEN = {
    "male": ("Anh", "Bảo", "Bình", "Cường", "Dũng", "Duy", "Dương", "Đạt", "Đông", "Đức", "Giang",
             "Hải", "Hiếu", "Hòa", "Hoàng", "Hùng", "Huy", "Khang", "Khánh", "Khoa", "Kiên",
             "Long", "Lâm", "Lộc", "Minh", "Nam", "Nghĩa", "Phong", "Phúc", "Quân", "Quang",
             "Sơn", "Tài", "Thắng", "Thành", "Thịnh", "Trung", "Tuấn", "Tùng", "Việt", "Vinh",
             "Vũ", "Thủy", "Toàn", "Tiến", "Hậu"),
    "female": ("An", "Anh", "Chi", "Dung", "Giang", "Hà", "Hạnh", "Hằng", "Hoa", "Hương",
               "Huyền", "Lan", "Linh", "Loan", "Mai", "My", "Ngân", "Ngọc", "Nhung", "Oanh",
               "Phương", "Quỳnh", "Tâm", "Thảo", "Thu", "Thủy", "Trang", "Trinh", "Uyên", "Vân",
               "Yến", "Hòa", "Thúy", "Nga", "Hồng", "Liên", "Xuân", "Diệp"),
}
# 2019 census shares (General Statistics Office), the largest groups
_ETHNICITIES = (
    ("Kinh", 853), ("Tày", 19), ("Thái", 19), ("Mường", 15), ("Khmer", 14), ("H'Mông", 15),
    ("Nùng", 11), ("Hoa", 8), ("Dao", 9), ("Gia Rai", 5), ("Ê Đê", 4), ("Ba Na", 3),
    ("Sán Chay", 2), ("Chăm", 2), ("Cơ Ho", 2), ("Xơ Đăng", 2), ("Sán Dìu", 2), ("Hrê", 1),
)
_RELIGIONS = (
    ("Không", 800), ("Phật giáo", 80), ("Công giáo", 70), ("Tin Lành", 10), ("Cao Đài", 10),
    ("Phật giáo Hòa Hảo", 10),
)
_STREETS = (
    "Lê Lợi", "Trần Hưng Đạo", "Nguyễn Huệ", "Hai Bà Trưng", "Lý Thường Kiệt", "Quang Trung",
    "Lê Duẩn", "Hùng Vương", "Nguyễn Trãi", "Phan Chu Trinh", "Điện Biên Phủ", "Võ Thị Sáu",
    "Nguyễn Văn Cừ", "Lạc Long Quân", "Bà Triệu", "Hoàng Diệu", "Trần Phú", "Ngô Quyền",
    "Nguyễn Thị Minh Khai", "Cách Mạng Tháng Tám", "Pasteur", "Lê Thánh Tông", "Hòa Bình",
)
_HAMLETS = ("Đông", "Tây", "Nam", "Bắc", "Thượng", "Hạ", "Trung", "Phú Mỹ", "An Lạc", "Tân Thành",
            "Hòa Bình", "Bình An", "Đồng Tâm", "Quyết Tiến")
_COMPANY_WORDS = ("Thương mại", "Dịch vụ", "Xây dựng", "Sản xuất", "Công nghệ", "Vận tải",
                  "Thực phẩm", "Du lịch", "Đầu tư", "Cơ khí", "Nông sản", "Dược phẩm")
_COMPANY_NAMES = ("Hồng Hà", "Sông Hàn", "Phương Nam", "Bình Minh", "Trường Sơn", "An Phát",
                  "Đại Việt", "Tân Long", "Hoàng Gia", "Ánh Dương", "Thái Bình Dương", "Kim Ngân",
                  "Sao Mai", "Hải Âu", "Phú Thịnh", "Minh Khang", "Việt Thắng", "Hòa An")
_CAR_MODELS = (
    ("Toyota", "Vios", "RL4"), ("Toyota", "Corolla Cross", "MR0"), ("Hyundai", "Accent", "RLA"),
    ("Hyundai", "Creta", "MAL"), ("Kia", "Morning", "RNY"), ("Kia", "Seltos", "RNY"),
    ("Mazda", "CX-5", "RP8"), ("Ford", "Ranger", "MNC"), ("Ford", "Everest", "MNC"),
    ("VinFast", "VF 5", "RLL"), ("VinFast", "VF 8", "RLL"), ("Honda", "City", "RLH"),
    ("Mitsubishi", "Xpander", "MK2"),
)
_TRUCK_MODELS = (("Hino", "FC9JLTC", "JHD"), ("Isuzu", "QKR 230", "RL8"),
                 ("Thaco", "Ollin 720", "RNF"), ("Hyundai", "Mighty EX8", "RNF"))
_BUS_MODELS = (("Thaco", "Universe TB120SL", "RNF"), ("Samco", "Felix CI", "RN9"),
               ("Hyundai", "County", "RNF"))
_MOTO_MODELS = (
    ("Honda", "Wave Alpha", "RLH"), ("Honda", "Vision", "RLH"), ("Honda", "Air Blade", "RLH"),
    ("Honda", "SH Mode", "RLH"), ("Yamaha", "Exciter", "RLC"), ("Yamaha", "Sirius", "RLC"),
    ("Yamaha", "Janus", "RLC"), ("Suzuki", "Raider", "RLS"), ("Piaggio", "Liberty", "RP8"),
    ("SYM", "Attila", "RLG"),
)
_TRAILER_MODELS = (("CIMC", "ZJV9400", "LJR"), ("Doosung", "DV-SMR40", "KL9"),
                   ("Tân Thanh", "TT-R40", "RN7"))
_COLOURS = ("Trắng", "Đen", "Bạc", "Xám", "Đỏ", "Xanh", "Vàng", "Nâu", "Trắng", "Đen")
_VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
_GEOHASH = "0123456789bcdefghjkmnpqrstuvwxyz"
_MST_WEIGHTS = (31, 29, 23, 19, 17, 13, 7, 5, 3)
_OLD_SERIES = tuple(a + b for a in "ABC" for b in "ABCDEGHKLMNPSTUVXY")
_TAX_STATUS = (("active", 850), ("suspended", 40), ("closing", 30), ("closed", 50),
               ("moved", 20), ("absent", 10))


def mst_check_digit(prefix9: str) -> str | None:
    """N10 of an MST (Circular 105/2020/TT-BTC Art. 5); None when no valid code exists."""
    s = sum(w * int(d) for w, d in zip(_MST_WEIGHTS, prefix9, strict=True))
    return None if s % 11 == 0 else str(10 - s % 11)


def _weighted(pairs: Sequence[tuple[str, int]]) -> tuple[tuple[str, ...], list[int]]:
    return tuple(v for v, _ in pairs), list(itertools.accumulate(w for _, w in pairs))


def _geohash(lat: float, lon: float, length: int = 12) -> str:
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    out: list[str] = []
    bits = 0
    n = 0
    even = True
    while len(out) < length:
        if even:
            mid = (lon_lo + lon_hi) / 2
            bit = lon >= mid
            lon_lo, lon_hi = (mid, lon_hi) if bit else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            bit = lat >= mid
            lat_lo, lat_hi = (mid, lat_hi) if bit else (lat_lo, mid)
        bits = bits * 2 + bit
        n += 1
        even = not even
        if n == 5:
            out.append(_GEOHASH[bits])
            bits = n = 0
    return "".join(out)


class Generator:
    """Seeded generator of valid records; ids, MSTs, plates and VINs are unique per instance."""

    def __init__(self, seed: int | str = 0, today: dt.date | None = None) -> None:
        self.rng = random.Random(seed)
        self.today = today or dt.datetime.now(dt.UTC).date()
        self._ids: set[str] = set()
        self._msts: set[str] = set()
        self._plates: set[str] = set()
        self._vins: set[str] = set()
        self._parcels: set[str] = set()
        self._tax_people: set[str] = set()
        self._wards = admin_units.wards()
        self._old_by_new: dict[str, list[admin_units.OldProvince]] = {}
        for p in admin_units.OLD_PROVINCES:
            self._old_by_new.setdefault(p.province_2025, []).append(p)
        self._surnames = _weighted(_SURNAMES)
        self._ethnicities = _weighted(_ETHNICITIES)
        self._religions = _weighted(_RELIGIONS)
        self._tax_status = _weighted(_TAX_STATUS)
        self._birth_codes = tuple(admin_units.BIRTH_PROVINCES)
        self._epoch = dt.date(1935, 1, 1).toordinal()

    # -- helpers ---------------------------------------------------------------------------

    def _pick(self, table: tuple[tuple[str, ...], list[int]]) -> str:
        values, cum = table
        return self.rng.choices(values, cum_weights=cum)[0]

    def _date_between(self, lo: dt.date, hi: dt.date) -> dt.date:
        if hi <= lo:
            return lo
        return dt.date.fromordinal(self.rng.randint(lo.toordinal(), hi.toordinal()))

    def _as_of(self, not_before: dt.date) -> dt.date:
        return max(not_before, self.today - dt.timedelta(days=self.rng.randint(0, 30)))

    def _address(self, ward: admin_units.Ward | None = None) -> Record:
        rng = self.rng
        w = ward or rng.choice(self._wards)
        addr: Record = {"province_code": w.province_code, "ward_code": w.code}
        r = rng.random()
        if r < 0.9:
            if w.kind == "phường":
                addr["street"] = f"Số {rng.randint(1, 299)} {rng.choice(_STREETS)}"
            else:
                addr["street"] = f"Thôn {rng.choice(_HAMLETS)}"
        return addr

    def _personal_id(self, birth_code: str, birth: dt.date, sex: str) -> str:
        # Circular 07/2016/TT-BCA Art. 7: PPP G YY RRRRRR
        g = 2 * ((birth.year - 1900) // 100) + (1 if sex == "female" else 0)
        head = f"{birth_code}{g}{birth.year % 100:02d}"
        while True:
            pid = f"{head}{self.rng.randrange(1_000_000):06d}"
            if pid not in self._ids:
                self._ids.add(pid)
                return pid

    def _mst(self, first: str = "") -> str:
        rng = self.rng
        while True:
            prefix = first + "".join(str(rng.randrange(10)) for _ in range(9 - len(first)))
            if prefix[2:9] == "0000000":
                continue
            check = mst_check_digit(prefix)
            if check is not None and prefix + check not in self._msts:
                self._msts.add(prefix + check)
                return prefix + check

    def _full_name(self, sex: str) -> str:
        rng = self.rng
        return (f"{self._pick(self._surnames)} {rng.choice(_MIDDLE[sex])} "
                f"{rng.choice(_GIVEN[sex])}")

    # -- datasets --------------------------------------------------------------------------

    def person(self) -> Record:
        """One valid population v1 record."""
        rng = self.rng
        sex = "female" if rng.random() < 0.5 else "male"
        birth = dt.date.fromordinal(rng.randint(self._epoch, self.today.toordinal() - 1))
        addr = self._address()
        olds = self._old_by_new[addr["province_code"]]
        birth_code = "0" + rng.choice(olds).code if rng.random() < 0.75 \
            else rng.choice(self._birth_codes)
        as_of = self._as_of(birth)
        rec: Record = {
            "id": self._personal_id(birth_code, birth, sex),
            "full_name": self._full_name(sex),
            "birth_date": birth.isoformat(),
            "sex": sex,
            "birth_registration_province": birth_code,
            "permanent_address": addr,
            "nationality": "VN",
            "status": "living",
        }
        if rng.random() < 0.02:
            rec["status"] = "deceased"
            rec["death_date"] = self._date_between(birth, as_of).isoformat()
        if rng.random() < 0.97:
            rec["ethnicity"] = self._pick(self._ethnicities)
        if rng.random() < 0.9:
            rec["religion"] = self._pick(self._religions)
        rec["as_of"] = as_of.isoformat()
        return rec

    def population(self, n: int) -> list[Record]:
        return [self.person() for _ in range(n)]

    def _adults(self, people: Sequence[Record]) -> list[Record]:
        cutoff = self.today.replace(year=self.today.year - 18, day=1).isoformat()
        adults = [p for p in people if p.get("status") == "living" and p["birth_date"] <= cutoff]
        if not adults:
            raise ValueError("need at least one living adult among people")
        return adults

    def tax(self, n: int, people: Sequence[Record]) -> list[Record]:
        """Taxpayers: ~45% individuals, ~15% households, ~40% organisations (some branches)."""
        rng = self.rng
        adults = self._adults(people)
        used = self._tax_people
        out: list[Record] = []
        orgs: list[Record] = []
        for _ in range(n):
            r = rng.random()
            person = rng.choice(adults)
            reg_from = max(dt.date(1998, 7, 1),  # MSTs exist since Decision 75/1998/QĐ-TTg
                           dt.date.fromisoformat(person["birth_date"]) + dt.timedelta(days=6575))
            if r < 0.6:
                kind = "individual" if r < 0.45 else "household"
                if rng.random() < 0.6 and person["id"] not in used:
                    tax_id = person["id"]  # Circular 86/2024 Art. 5(5): the id is the tax code
                    used.add(tax_id)
                else:
                    tax_id = self._mst("8")  # personal MSTs issued before 2025 start with 8
                name = person["full_name"] if kind == "individual" \
                    else f"Hộ kinh doanh {person['full_name']}"
                rec: Record = {"tax_id": tax_id, "kind": kind, "name": name,
                               "personal_id": person["id"],
                               "address": dict(person["permanent_address"])}
            else:
                if orgs and rng.random() < 0.15:
                    parent = rng.choice(orgs)
                    suffix = parent.setdefault("_branches", 0) + 1
                    parent["_branches"] = suffix
                    tax_id = f"{parent['tax_id']}-{suffix:03d}"
                    name = f"Chi nhánh {parent['name']}"
                else:
                    tax_id = self._mst(f"{rng.randint(1, 80):02d}")
                    form = "Công ty TNHH" if rng.random() < 0.7 else "Công ty Cổ phần"
                    name = f"{form} {rng.choice(_COMPANY_WORDS)} {rng.choice(_COMPANY_NAMES)}"
                rec = {"tax_id": tax_id, "kind": "organisation", "name": name,
                       "address": self._address()}
                if rng.random() < 0.8:
                    rec["personal_id"] = person["id"]  # legal representative
                reg_from = dt.date(1998, 7, 1)
            as_of = self._as_of(reg_from)
            rec["tax_office"] = f"{rec['address']['province_code']}{rng.randint(100, 999)}"
            rec["status"] = self._pick(self._tax_status)
            rec["registration_date"] = self._date_between(reg_from, as_of).isoformat()
            rec["as_of"] = as_of.isoformat()
            if rec["kind"] == "organisation" and "-" not in rec["tax_id"]:
                orgs.append(rec)
            out.append(rec)
        for rec in orgs:
            rec.pop("_branches", None)
        return out

    def _organisations(self, taxpayers: Sequence[Record] | None) -> list[str]:
        return [t["tax_id"] for t in taxpayers or () if t["kind"] == "organisation"]

    def land(self, n: int, people: Sequence[Record],
             taxpayers: Sequence[Record] | None = None) -> list[Record]:
        """Parcels owned by generated people (and organisations, if ``taxpayers`` are given)."""
        rng = self.rng
        adults = self._adults(people)
        orgs = self._organisations(taxpayers)
        out: list[Record] = []
        for _ in range(n):
            while True:
                w = rng.choice(self._wards)
                sheet, number = rng.randint(1, 80), rng.randint(1, 2500)
                key = f"{w.code}-{sheet}-{number}"
                if key not in self._parcels:
                    self._parcels.add(key)
                    break
            urban = w.kind == "phường"
            r = rng.random()
            if r < 0.5:
                purposes = ["ODT" if urban else "ONT"]
                area = rng.uniform(30, 400)
            elif r < 0.65:
                purposes = ["ODT" if urban else "ONT", "CLN"]
                area = rng.uniform(150, 1500)
            else:
                purposes = [rng.choice(("LUC", "HNK", "CLN", "NTS", "RSX", "TMD", "SKC"))]
                area = rng.uniform(200, 20000)
            if orgs and rng.random() < 0.08:
                owners = [rng.choice(orgs)]
            else:
                owners = [rng.choice(adults)["id"]]
                if rng.random() < 0.35:  # spouses hold land jointly (Land Law 2024 Art. 135)
                    other = rng.choice(adults)["id"]
                    if other != owners[0]:
                        owners.append(other)
            rec: Record = {
                "ward_code": w.code,
                "map_sheet": sheet,
                "parcel_number": number,
            }
            if rng.random() < 0.85:
                rec["parcel_id"] = _geohash(rng.uniform(8.7, 23.2), rng.uniform(102.2, 109.4))
            rec["area_m2"] = round(area, 1)
            rec["purposes"] = purposes
            if rng.random() < 0.9:
                if rng.random() < 0.3:  # Circular 10/2024 form, from 1 Aug 2024
                    rec["certificate_serial"] = f"A{rng.choice('ABCD')} {rng.randrange(10**8):08d}"
                else:
                    rec["certificate_serial"] = f"{rng.choice(_OLD_SERIES)} " \
                                                f"{rng.randrange(10**6):06d}"
            rec["owners"] = owners
            addr = self._address(w)
            if "street" in addr:
                addr["street"] = f"Thửa {number}, tờ bản đồ {sheet}, {addr['street']}"
            rec["address"] = addr
            rec["as_of"] = self._as_of(dt.date(2000, 1, 1)).isoformat()
            out.append(rec)
        return out

    def _plate(self, province_code: str | None, kind: str, year: int) -> str:
        rng = self.rng
        olds = self._old_by_new.get(province_code or "") or list(admin_units.OLD_PROVINCES)
        code = rng.choice(rng.choice(olds).plates)
        while True:
            if kind == "motorbike":
                series = rng.choice("BCDEFGHKLMNPSTUVXYZ") + str(rng.randint(1, 9))
                plate = f"{code}-{series} {rng.randrange(1000):03d}.{rng.randrange(100):02d}"
            else:
                series = {"trailer": "R", "semi_trailer": "R"}.get(kind) or \
                    rng.choice("ABCDEFGHKLMNPSUVXYZ")
                if year < 2010 and rng.random() < 0.5:  # older cars kept 4-digit plates
                    plate = f"{code}{series}-{rng.randrange(10000):04d}"
                else:
                    plate = f"{code}{series}-{rng.randrange(1000):03d}.{rng.randrange(100):02d}"
            if plate not in self._plates:
                self._plates.add(plate)
                return plate

    def _vin(self, wmi: str) -> str:
        while True:
            vin = wmi + "".join(self.rng.choices(_VIN_CHARS, k=14))
            if vin not in self._vins:
                self._vins.add(vin)
                return vin

    def vehicle(self, n: int, people: Sequence[Record],
                taxpayers: Sequence[Record] | None = None) -> list[Record]:
        """Vehicles owned by generated people (and organisations, if ``taxpayers`` are given)."""
        rng = self.rng
        adults = self._adults(people)
        org_records = [t for t in taxpayers or () if t["kind"] == "organisation"]
        out: list[Record] = []
        kinds = ("motorbike", "car", "truck", "bus", "trailer", "semi_trailer")
        cum = [60, 90, 96, 98, 99, 100]
        for _ in range(n):
            kind = rng.choices(kinds, cum_weights=cum)[0]
            models = {"motorbike": _MOTO_MODELS, "car": _CAR_MODELS, "truck": _TRUCK_MODELS,
                      "bus": _BUS_MODELS}.get(kind, _TRAILER_MODELS)
            make, model, wmi = rng.choice(models)
            if org_records and (kind in ("truck", "bus", "trailer", "semi_trailer")
                                or rng.random() < 0.1):
                org = rng.choice(org_records)
                owner_id, province = org["tax_id"], org["address"]["province_code"]
                earliest = dt.date(2000, 1, 1)
            else:
                person = rng.choice(adults)
                owner_id = person["id"]
                province = person["permanent_address"]["province_code"]
                earliest = dt.date.fromisoformat(person["birth_date"]) + dt.timedelta(days=6575)
            year = rng.randint(max(2000, earliest.year), self.today.year)
            as_of = self._as_of(dt.date(year, 12, 31) if year < self.today.year else self.today)
            registered = self._date_between(max(dt.date(year, 1, 1), earliest), as_of)
            rec: Record = {
                "plate": self._plate(province, kind, year),
                "vin": self._vin(wmi),
                "kind": kind,
                "make": make,
                "model": model,
                "year": year,
            }
            if rng.random() < 0.95:
                rec["colour"] = rng.choice(_COLOURS)
            rec["owner_id"] = owner_id
            rec["registration_date"] = registered.isoformat()
            rec["status"] = rng.choices(("registered", "transferred", "deregistered"),
                                        cum_weights=(90, 96, 100))[0]
            rec["as_of"] = as_of.isoformat()
            out.append(rec)
        return out


# -- faults -------------------------------------------------------------------------------

_COMMON = {"unknown_field": "unknown_field", "missing_field": "missing_field",
           "future_as_of": "future_date", "not_normalised": "not_normalised"}
#: dataset -> fault kind -> the violation code it produces (not_normalised: a note's code)
FAULTS: dict[str, dict[str, str]] = {
    "population": {**_COMMON, "unknown_commune": "unknown_ward",
                   "ward_not_in_province": "ward_not_in_province", "future_birth": "future_date",
                   "bad_id": "id_century_sex_mismatch",
                   "death_before_birth": "death_before_birth"},
    "tax": {**_COMMON, "unknown_commune": "unknown_ward",
            "ward_not_in_province": "ward_not_in_province", "bad_checksum": "mst_checksum",
            "wrong_owner": "unknown_birth_province"},
    "land": {**_COMMON, "unknown_commune": "unknown_ward", "wrong_owner": "owner_id",
             "bad_area": "area_precision", "bad_purpose": "land_purpose"},
    "vehicle": {**_COMMON, "wrong_owner": "owner_id", "bad_plate": "plate_province",
                "bad_vin": "vin_format"},
}
_TEXT = {"population": "full_name", "tax": "name", "land": "address", "vehicle": "make"}
_ADDRESS = {"population": "permanent_address", "tax": "address", "land": "address"}
_REQUIRED = {"population": "birth_date", "tax": "kind", "land": "purposes", "vehicle": "vin"}


def dataset_of(data: Record) -> str:
    """Which dataset a record's ``data`` belongs to, from its fields."""
    if "tax_id" in data:
        return "tax"
    if "plate" in data or "vin" in data:
        return "vehicle"
    if "parcel_number" in data or "map_sheet" in data:
        return "land"
    if "birth_date" in data or "full_name" in data:
        return "population"
    raise ValueError("cannot tell the dataset of this record")


def fault_kinds(dataset: str) -> tuple[str, ...]:
    return tuple(FAULTS[dataset])


def fault(data: Record, kind: str) -> Record:
    """A copy of a valid record with one fault of ``kind`` (see ``FAULTS``); deterministic."""
    ds = dataset_of(data)
    if kind not in FAULTS[ds]:
        raise ValueError(f"fault {kind!r} does not apply to {ds}; try {', '.join(FAULTS[ds])}")
    d = copy.deepcopy(data)
    if kind == "unknown_field":
        d["remarks"] = "không rõ"
    elif kind == "missing_field":
        del d[_REQUIRED[ds]]
    elif kind == "future_as_of":
        d["as_of"] = "2999-01-01"
    elif kind == "not_normalised":
        if ds == "land":
            d["address"]["street"] = "  Thôn  Hoà   Bình "
        else:
            d[_TEXT[ds]] = " " + unicodedata.normalize("NFD", d[_TEXT[ds]]) + "  Hoà "
    elif kind == "unknown_commune":
        d[_ADDRESS[ds]]["ward_code"] = "99999"
        if ds == "land":
            d["ward_code"] = "99999"
    elif kind == "ward_not_in_province":
        addr = d[_ADDRESS[ds]]
        addr["province_code"] = "96" if addr["province_code"] != "96" else "01"
    elif kind == "future_birth":
        d["birth_date"] = "2999" + d["birth_date"][4:]
        d.pop("death_date", None)
        d["status"] = "living"
    elif kind == "bad_id":
        g = int(d["id"][3])
        d["id"] = d["id"][:3] + str(g ^ 1) + d["id"][4:]  # the other sex
    elif kind == "death_before_birth":
        d["status"] = "deceased"
        birth = dt.date.fromisoformat(d["birth_date"])
        d["death_date"] = (birth - dt.timedelta(days=1)).isoformat()
    elif kind == "bad_checksum":
        tid = d["tax_id"] if len(d["tax_id"]) != 12 else "0100109106"
        d["tax_id"] = tid[:9] + str((int(tid[9]) + 1) % 10) + tid[10:]
        if d["kind"] != "organisation":
            d["kind"] = "individual"
    elif kind == "wrong_owner":
        bad = "999" + "0" * 9  # 999 is no birth-registration province
        if ds == "tax":
            d["personal_id"] = bad
        elif ds == "land":
            d["owners"][0] = bad
        else:
            d["owner_id"] = bad
    elif kind == "bad_plate":
        plate: str = d["plate"]
        d["plate"] = "00" + plate[2:]
    elif kind == "bad_vin":
        d["vin"] = d["vin"][:5] + "O" + d["vin"][6:]
    elif kind == "bad_area":
        d["area_m2"] = float(d["area_m2"]) + 0.05
    elif kind == "bad_purpose":
        d["purposes"] = ["XYZ"]
    return d

